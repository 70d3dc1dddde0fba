//! `hodei-agent`: runs jobs from a Hodei server on this machine.
//!
//! Every setting ([`AgentSettings`]) comes from a flag, an environment
//! variable or a TOML file (`--config`), in that order of precedence. Bad
//! configuration exits 2 naming the setting.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hodei_agent::{AgentSettings, Shutdown, run_agent};
use hodei_examples::{bad_config, init_logging, runtime};
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
    #[command(flatten)]
    settings: AgentSettings,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let file = args.config.as_deref().map(AgentSettings::from_file);
    let resolved = file
        .transpose()
        .and_then(|f| args.settings.or(f.unwrap_or_default()).resolve());
    let (config, level) = match resolved {
        Ok(c) => c,
        Err(e) => return bad_config("hodei-agent", e),
    };
    if let Err(e) = init_logging(&level) {
        return bad_config("hodei-agent", e);
    }
    // Jobs are child processes and pipes: a small runtime is plenty.
    let Ok(rt) = runtime("hodei-agent", Some(2)) else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let (tx, rx) = watch::channel(Shutdown::Run);
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("hodei-agent: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        tokio::spawn(async move {
            for step in [Shutdown::Drain, Shutdown::Cancel, Shutdown::Exit] {
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
