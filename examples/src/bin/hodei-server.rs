//! `hodei-server`: the Hodei API over gRPC on an embedded store, with
//! Prometheus metrics and health endpoints over HTTP.
//!
//! Every setting comes from a flag, an environment variable or a TOML file
//! (`--config`), in that order of precedence. Bad configuration exits 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt as _;
use clap::{Parser, Subcommand};
use hodei_examples::{init_logging, parse_duration, tokens};
use hodei_hwp::{Engine, EngineConfig, EngineHandle, Principal, Tokens, serve};
use hodei_store::{MemStore, RedbStore, Store, StoreConfig, WriteStats};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The Hodei server: schedules jobs onto agents, stores everything in an
/// embedded database, serves the gRPC API and HTTP /metrics, /healthz and
/// /readyz.
///
/// On first start it creates a join token (for agents) and an admin token
/// (for the CLI) in the data directory, mode 0600, and prints where they
/// are. SIGTERM or SIGINT stops it cleanly: it stops accepting, tells
/// agents, flushes the store and exits 0.
#[derive(Debug, Parser)]
#[command(name = "hodei-server", version)]
struct Args {
    /// A TOML file with any of the settings below (snake_case keys, e.g.
    /// `listen = "0.0.0.0:7070"`).
    #[arg(long, env = "HODEI_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Where the gRPC API listens [default: 127.0.0.1:7070].
    #[arg(long, env = "HODEI_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where /metrics, /healthz and /readyz listen [default: 127.0.0.1:7071].
    #[arg(long, env = "HODEI_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// The data directory: the store and the token files [default: ./hodei-data].
    #[arg(long, env = "HODEI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `redb` (durable, the default) or `memory` (lost on exit; for tests
    /// and load runs).
    #[arg(long, env = "HODEI_STORE")]
    store: Option<String>,
    /// How often agents heartbeat [default: 5s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<Duration>,
    /// A worker silent this long is lost and its jobs are retried [default: 15s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_HEARTBEAT_TIMEOUT")]
    heartbeat_timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when a job is cancelled [default: 10s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_CANCEL_GRACE")]
    cancel_grace: Option<Duration>,
    /// On SIGTERM, how long /readyz answers 503 and gRPC health reports
    /// NOT_SERVING, listeners still open, before the server stops
    /// accepting [default: 1s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_SHUTDOWN_DELAY")]
    shutdown_delay: Option<Duration>,
    /// A tenant's weight in fair sharing, tenant=N; repeat for several
    /// (unlisted tenants weigh 1).
    #[arg(long = "weight", value_parser = parse_weight, env = "HODEI_WEIGHTS", value_delimiter = ',')]
    weights: Vec<(String, u32)>,
    /// Output stored per job; later output is dropped and counted
    /// [default: 67108864].
    #[arg(long, env = "HODEI_MAX_LOG_BYTES_PER_JOB")]
    max_log_bytes_per_job: Option<u64>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long, env = "HODEI_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a client token bound to one tenant, stores it in the data
    /// directory (tenant-tokens, mode 0600) and prints it. A running
    /// server picks it up on its next start.
    TenantToken {
        /// The tenant the token may act for.
        tenant: String,
    },
}

/// The same settings, from the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    #[serde(default, with = "humantime_serde")]
    heartbeat_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    heartbeat_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    cancel_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_delay: Option<Duration>,
    max_log_bytes_per_job: Option<u64>,
    #[serde(default)]
    weights: std::collections::BTreeMap<String, u32>,
    log_level: Option<String>,
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (t, w) = hodei_examples::parse_label(s)?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a whole number"))?;
    Ok((t, w))
}

struct Config {
    listen: SocketAddr,
    http_listen: SocketAddr,
    data_dir: PathBuf,
    durable: bool,
    engine: EngineConfig,
    store: StoreConfig,
    log_level: String,
}

fn configure(args: &Args) -> Result<Config, String> {
    let file = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let durable = match args
        .store
        .clone()
        .or(file.store)
        .as_deref()
        .unwrap_or("redb")
    {
        "redb" => true,
        "memory" => false,
        other => return Err(format!("store: {other:?} must be redb or memory")),
    };
    let mut engine = EngineConfig::default();
    if let Some(d) = args.heartbeat_interval.or(file.heartbeat_interval) {
        engine.heartbeat_interval = d;
    }
    if let Some(d) = args.heartbeat_timeout.or(file.heartbeat_timeout) {
        engine.heartbeat_timeout = d;
    }
    if engine.heartbeat_timeout <= engine.heartbeat_interval {
        return Err(format!(
            "heartbeat_timeout: {:?} must be longer than heartbeat_interval {:?}",
            engine.heartbeat_timeout, engine.heartbeat_interval
        ));
    }
    if let Some(d) = args.cancel_grace.or(file.cancel_grace) {
        engine.cancel_grace = d;
    }
    engine.shutdown_delay = args
        .shutdown_delay
        .or(file.shutdown_delay)
        .unwrap_or(Duration::from_secs(1));
    let mut weights = file.weights;
    weights.extend(args.weights.iter().cloned());
    for (tenant, w) in weights {
        if w == 0 {
            return Err(format!("weights.{tenant}: must be at least 1"));
        }
        let t = tenant
            .parse()
            .map_err(|e| format!("weights.{tenant}: {e}"))?;
        engine.tenant_weights.push((t, w));
    }
    let mut store = StoreConfig::default();
    if let Some(n) = args.max_log_bytes_per_job.or(file.max_log_bytes_per_job) {
        store.max_log_bytes_per_job = n;
    }
    let default_addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    Ok(Config {
        listen: args.listen.or(file.listen).unwrap_or(default_addr(7070)),
        http_listen: args
            .http_listen
            .or(file.http_listen)
            .unwrap_or(default_addr(7071)),
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("hodei-data")),
        durable,
        engine,
        store,
        log_level: args
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into()),
    })
}

/// What the HTTP endpoints read.
struct Http<S> {
    engine: EngineHandle<S>,
    stats: fn(&S) -> Option<&WriteStats>,
    stopping: AtomicBool,
}

async fn metrics<S: Store>(State(h): State<Arc<Http<S>>>) -> impl IntoResponse {
    match h.engine.snapshot().await {
        Ok(snap) => {
            let text =
                h.engine
                    .metrics()
                    .render(&snap, h.engine.cluster(), (h.stats)(h.engine.store()));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                text,
            )
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<S: Store>(State(h): State<Arc<Http<S>>>) -> impl IntoResponse {
    if h.stopping.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    }
    match h.engine.snapshot().await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "engine stopped\n"),
    }
}

async fn run<S: Store>(
    config: Config,
    store: Arc<S>,
    stats: fn(&S) -> Option<&WriteStats>,
    tokens: Tokens,
) -> anyhow::Result<()> {
    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("http_listen: cannot bind {}", config.http_listen))?;
    let (engine, engine_task) = Engine::start(store, config.engine.clone()).await?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    // Scripts and tests read these two lines.
    println!("hodei-server: gRPC on http://{grpc_addr}");
    println!("hodei-server: metrics on http://{http_addr}/metrics");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    });
    let state = Arc::new(Http {
        engine: engine.clone(),
        stats,
        stopping: AtomicBool::new(false),
    });
    let app = axum::Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .with_state(Arc::clone(&state));
    // The HTTP listener closes last: /readyz says 503 while gRPC drains.
    let (http_stop_tx, http_stop) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        axum::serve(
            http.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            app,
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.await;
        })
        .await
    });
    let mut grpc_stop = stop_rx.clone();
    let ready = Arc::clone(&state);
    let served = serve(grpc, engine, tokens, &config.engine, async move {
        let _ = grpc_stop.wait_for(|s| *s).await;
        ready.stopping.store(true, Ordering::Release);
    })
    .await;
    let _ = http_stop_tx.send(());
    served?;
    http_task.await??;
    drop(state);
    // The engine ends once the last handle is gone; the store's writer
    // then commits what is queued and closes the file.
    engine_task.await?;
    tracing::info!("stopped; store flushed");
    Ok(())
}

fn load_tokens(dir: &Path) -> anyhow::Result<Tokens> {
    let mut t = Tokens::new();
    let join = dir.join("join.token");
    let admin = dir.join("admin.token");
    let (join_token, created) = tokens::load_or_create(&join)?;
    if created {
        println!("hodei-server: created the join token in {}", join.display());
    }
    let (admin_token, created) = tokens::load_or_create(&admin)?;
    if created {
        println!(
            "hodei-server: created the admin token in {}",
            admin.display()
        );
    }
    t.add_join_token(&join_token);
    t.add_client_token(&admin_token, Principal::Admin);
    for (tenant, token) in tokens::tenant_tokens(&dir.join("tenant-tokens"))? {
        t.add_client_token(&token, Principal::Tenant(tenant));
    }
    Ok(t)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match configure(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hodei-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config.log_level) {
        eprintln!("hodei-server: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = tokens::private_dir(&config.data_dir) {
        eprintln!("hodei-server: data_dir: {e:#}");
        return ExitCode::from(2);
    }
    if let Some(Command::TenantToken { tenant }) = &args.command {
        return match tokens::add_tenant_token(&config.data_dir.join("tenant-tokens"), tenant) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hodei-server: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let tokens = match load_tokens(&config.data_dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hodei-server: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match hodei_examples::runtime("hodei-server", None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        if config.durable {
            let path = config.data_dir.join("hodei.redb");
            let store = RedbStore::open(&path, config.store)
                .with_context(|| format!("store {}", path.display()))?;
            run(config, Arc::new(store), |s| Some(s.write_stats()), tokens).await
        } else {
            let store = MemStore::new(config.store);
            run(config, Arc::new(store), |_| None, tokens).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hodei-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
