//! `hodei-agent`: runs jobs from a Hodei server on this machine.
//!
//! Every setting comes from a flag, an environment variable or a TOML file
//! (`--config`), in that order of precedence. Bad configuration exits 2.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hodei_agent::{AgentConfig, Containment, ContainmentMode, Shutdown, run_agent};
use hodei_core::Resources;
use hodei_examples::{init_logging, parse_duration, parse_label, read_secret_file};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Runs jobs from a Hodei server on this machine.
///
/// Signals: the first SIGTERM or SIGINT drains (no new jobs; running jobs
/// get --drain-grace, then are cancelled; logs and results are flushed;
/// exit 0); a second cancels running jobs at once (still flushing); a
/// third exits immediately.
#[derive(Debug, Parser)]
#[command(name = "hodei-agent", version)]
struct Args {
    /// A TOML file with any of the settings below (snake_case keys, e.g.
    /// `server = "http://10.0.0.1:7070"`, `labels = { zone = "a" }`).
    #[arg(long, env = "HODEI_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The server's gRPC endpoint, e.g. http://10.0.0.1:7070.
    #[arg(long, env = "HODEI_SERVER")]
    server: Option<String>,
    /// The join token (prefer --join-token-file: flags show in `ps`).
    #[arg(long, env = "HODEI_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token (mode 0600).
    #[arg(long, env = "HODEI_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// The worker's name [default: the host name].
    #[arg(long, env = "HODEI_AGENT_NAME")]
    name: Option<String>,
    /// A label, key=value; repeat for several.
    #[arg(long = "label", value_parser = parse_label, env = "HODEI_AGENT_LABELS", value_delimiter = ',')]
    labels: Vec<(String, String)>,
    /// CPU offered, millicores [default: every CPU].
    #[arg(long, env = "HODEI_AGENT_CPU_MILLIS")]
    cpu_millis: Option<u32>,
    /// Memory offered, MiB [default: all memory].
    #[arg(long, env = "HODEI_AGENT_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// GPUs offered [default: 0].
    #[arg(long, env = "HODEI_AGENT_GPUS")]
    gpus: Option<u32>,
    /// How long running jobs may go on after a drain begins [default: 5m].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_DRAIN_GRACE")]
    drain_grace: Option<Duration>,
    /// Between SIGTERM and SIGKILL when the agent cancels a job [default: 10s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_CANCEL_GRACE")]
    cancel_grace: Option<Duration>,
    /// Output kept per attempt; past it, the head and tail are kept, 0 for
    /// no cap [default: 67108864].
    #[arg(long, env = "HODEI_AGENT_MAX_LOG_BYTES")]
    max_log_bytes: Option<u64>,
    /// Unacknowledged output held in memory before spilling to disk
    /// [default: 67108864].
    #[arg(long, env = "HODEI_AGENT_MEMORY_LIMIT")]
    memory_limit: Option<usize>,
    /// Where output spills while the server is unreachable
    /// [default: $TMPDIR/hodei-agent].
    #[arg(long, env = "HODEI_AGENT_SPILL_DIR")]
    spill_dir: Option<PathBuf>,
    /// The largest delay between reconnect attempts [default: 30s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_RECONNECT_MAX")]
    reconnect_max: Option<Duration>,
    /// How long to keep trying to deliver logs and results on shutdown
    /// [default: 5m].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_FLUSH_TIMEOUT")]
    flush_timeout: Option<Duration>,
    /// How a job's processes are contained: auto (a cgroup v2 per job
    /// where the agent may create one, else the child subreaper), cgroup
    /// or subreaper [default: auto].
    #[arg(long, env = "HODEI_AGENT_CONTAINMENT")]
    containment: Option<ContainmentMode>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long, env = "HODEI_LOG")]
    log_level: Option<String>,
}

/// The same settings, from the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    join_token: Option<String>,
    join_token_file: Option<PathBuf>,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    cpu_millis: Option<u32>,
    memory_mb: Option<u64>,
    gpus: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    drain_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    cancel_grace: Option<Duration>,
    max_log_bytes: Option<u64>,
    memory_limit: Option<usize>,
    spill_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    reconnect_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    flush_timeout: Option<Duration>,
    containment: Option<String>,
    log_level: Option<String>,
}

fn configure(args: Args) -> Result<(AgentConfig, String), String> {
    let file = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let server = args
        .server
        .or(file.server)
        .ok_or("server: required (--server, HODEI_SERVER or `server` in the file)")?;
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(format!(
            "server: {server:?} must start with http:// or https://"
        ));
    }
    let token = match (args.join_token, args.join_token_file) {
        (Some(t), _) => t,
        (None, Some(p)) => read_secret_file(&p).map_err(|e| format!("join_token_file: {e}"))?,
        (None, None) => match (file.join_token, file.join_token_file) {
            (Some(t), _) => t,
            (None, Some(p)) => read_secret_file(&p).map_err(|e| format!("join_token_file: {e}"))?,
            (None, None) => {
                return Err("join_token: required (--join-token-file, --join-token, HODEI_JOIN_TOKEN or the file)".into());
            }
        },
    };
    let mut c = AgentConfig::new(server, token);
    if let Some(n) = args.name.or(file.name) {
        c.name = n;
    }
    c.labels = file.labels;
    c.labels.extend(args.labels);
    // The server's rule: a label a job could never select is refused here.
    for (k, v) in &c.labels {
        if let Some(why) = hodei_core::label_key_problem(k) {
            return Err(format!("labels.{k}: key {why}"));
        }
        if let Some(why) = hodei_core::label_value_problem(v) {
            return Err(format!("labels.{k}: value {why}"));
        }
    }
    let detected = c.capacity;
    c.capacity = Resources::new(
        args.cpu_millis
            .or(file.cpu_millis)
            .unwrap_or(detected.cpu_millis),
        args.memory_mb
            .or(file.memory_mb)
            .unwrap_or(detected.memory_mb),
        args.gpus.or(file.gpus).unwrap_or(detected.gpus),
    );
    if c.capacity.cpu_millis == 0 && c.capacity.memory_mb == 0 {
        return Err("cpu_millis, memory_mb: at least one must be above 0".into());
    }
    if let Some(d) = args.drain_grace.or(file.drain_grace) {
        c.drain_grace = d;
    }
    if let Some(d) = args.cancel_grace.or(file.cancel_grace) {
        c.cancel_grace = d;
    }
    if let Some(n) = args.max_log_bytes.or(file.max_log_bytes) {
        c.max_log_bytes = n;
    }
    if let Some(n) = args.memory_limit.or(file.memory_limit) {
        c.memory_limit = n;
    }
    if let Some(p) = args.spill_dir.or(file.spill_dir) {
        c.spill_dir = p;
    }
    if let Some(d) = args.reconnect_max.or(file.reconnect_max) {
        if d < c.reconnect_min {
            return Err(format!("reconnect_max: at least {:?}", c.reconnect_min));
        }
        c.reconnect_max = d;
    }
    if let Some(d) = args.flush_timeout.or(file.flush_timeout) {
        c.flush_timeout = d;
    }
    let mode = match (args.containment, file.containment) {
        (Some(m), _) => m,
        (None, Some(m)) => m.parse().map_err(|e| format!("containment: {e}"))?,
        (None, None) => ContainmentMode::Auto,
    };
    c.exec.containment = Containment::new(mode).map_err(|e| format!("containment: {e}"))?;
    let level = args
        .log_level
        .or(file.log_level)
        .unwrap_or_else(|| "info".into());
    Ok((c, level))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, level) = match configure(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hodei-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&level) {
        eprintln!("hodei-agent: {e}");
        return ExitCode::from(2);
    }
    // Jobs are child processes and pipes: a small runtime is plenty.
    let runtime = match hodei_examples::runtime("hodei-agent", Some(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let (tx, rx) = watch::channel(Shutdown::Run);
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                eprintln!("hodei-agent: cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(async move {
            let steps = [Shutdown::Drain, Shutdown::Cancel, Shutdown::Exit];
            for step in steps {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::info!(?step, "signal received");
                if tx.send(step).is_err() {
                    return;
                }
            }
        });
        tracing::info!(server = %config.server, name = %config.name, capacity = %config.capacity, "starting");
        match run_agent(config, rx).await {
            Ok(report) if report.is_clean() => {
                tracing::info!(jobs = report.jobs_run, "stopped; everything delivered");
                ExitCode::SUCCESS
            }
            Ok(report) => {
                tracing::error!(
                    batches = report.unflushed_batches,
                    results = report.unflushed_results,
                    "stopped with output the server never acknowledged"
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                tracing::error!(error = %e, "agent failed");
                ExitCode::FAILURE
            }
        }
    })
}
