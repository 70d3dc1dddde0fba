//! The agent: one connection to the server, the jobs it runs, and what it
//! still owes the server.

//!
//! Split as the agent's concerns are: `connection` (open, register,
//! Welcome, backoff), `ledger` (each attempt's process, and the delivery
//! of its start report, log batches and result), `shutdown` (drain,
//! cancel, flush), and here the loop that joins them.

mod connection;
mod ledger;
mod shutdown;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hodei_core::{JobId, Resources};
use hodei_hwp::proto::{self, agent_message::Msg as Out, server_message::Msg as In};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::connection::{Conn, Connecting, backoff, msg, open};
use self::ledger::Ledger;
pub use self::shutdown::Shutdown;
use self::shutdown::Stopping;
use crate::batch::BatchConfig;
use crate::exec::ExecConfig;
use crate::identity::{Identity, IdentityError, renew_loop};
use crate::telemetry::Sampler;

/// Job events queued toward the ledger; full: the job's output waits.
const EVENTS: usize = 256;

/// Everything the agent is told.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The server, `https://host:port` (or `http://` for a plaintext one).
    pub server: String,
    /// The join token: for `https://`, needed only until the agent holds a
    /// certificate.
    pub join_token: String,
    /// Where the agent keeps its key and certificate; one running agent at
    /// a time (it holds a lock there).
    pub state_dir: PathBuf,
    /// `state_dir` is the default one, not chosen: if another running
    /// agent holds it, this one takes the next free `state_dir-N`.
    pub state_dir_is_default: bool,
    /// The name shown for this worker (the host name by default).
    pub name: String,
    /// Labels placement constraints match against.
    pub labels: BTreeMap<String, String>,
    /// What the agent offers.
    pub capacity: Resources,
    /// How jobs are run.
    pub exec: ExecConfig,
    /// How output is cut into batches.
    pub batch: BatchConfig,
    /// Per attempt: past this many bytes of output, only the head and the
    /// tail are kept (0: no cap).
    pub max_log_bytes: u64,
    /// Bytes of unacknowledged output held in memory before spilling.
    pub memory_limit: usize,
    /// Bytes sent and not yet acknowledged on a connection; past it, jobs'
    /// output waits (and so do the jobs).
    pub window: usize,
    /// Where the spill file lives.
    pub spill_dir: PathBuf,
    /// How long running jobs may go on after a drain begins.
    pub drain_grace: Duration,
    /// Between SIGTERM and SIGKILL when the agent cancels its jobs.
    pub cancel_grace: Duration,
    /// The first reconnect delay; it doubles up to `reconnect_max`, with
    /// full jitter.
    pub reconnect_min: Duration,
    /// The largest reconnect delay.
    pub reconnect_max: Duration,
    /// How long a connection attempt (up to Welcome) may take.
    pub connect_timeout: Duration,
    /// Once every job has ended on shutdown, how long to keep trying to
    /// deliver what is owed before giving up.
    pub flush_timeout: Duration,
}

impl AgentConfig {
    /// A configuration with the defaults, for `server` and `join_token`.
    pub fn new(server: impl Into<String>, join_token: impl Into<String>) -> Self {
        let name = host_name();
        AgentConfig {
            server: server.into(),
            join_token: join_token.into(),
            state_dir: default_state_dir(&name),
            state_dir_is_default: true,
            name,
            labels: BTreeMap::new(),
            capacity: crate::telemetry::detect_capacity(),
            exec: ExecConfig::default(),
            batch: BatchConfig::default(),
            max_log_bytes: 64 * 1024 * 1024,
            memory_limit: 64 * 1024 * 1024,
            window: 16 * 1024 * 1024,
            spill_dir: std::env::temp_dir().join("hodei-agent"),
            drain_grace: Duration::from_secs(300),
            cancel_grace: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(300),
        }
    }
}

/// Where an agent named `name` keeps its identity by default:
/// `/var/lib/hodei-agent/<name>` for root, else
/// `$XDG_STATE_HOME/hodei-agent/<name>` or
/// `~/.local/state/hodei-agent/<name>`; so agents of different names on one
/// machine are different workers.
pub fn default_state_dir(name: &str) -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let base = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/hodei-agent")
    } else if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(d).join("hodei-agent")
    } else {
        match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local/state/hodei-agent"),
            None => std::env::temp_dir().join("hodei-agent-state"),
        }
    };
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.is_empty() || safe.starts_with('.') {
        format!("agent{safe}")
    } else {
        safe
    };
    base.join(safe)
}

/// The machine's host name, or `"agent"`.
pub fn host_name() -> String {
    hodei_hwp::settings::host_name().unwrap_or_else(|| "agent".into())
}

/// Why the agent stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The telemetry thread could not start.
    #[error("telemetry: {0}")]
    Telemetry(std::io::Error),
    /// The agent has neither a certificate nor a usable join token.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What the agent left behind when it returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Attempts started.
    pub jobs_run: u64,
    /// Log batches never acknowledged (0 after a clean shutdown).
    pub unflushed_batches: usize,
    /// Results never acknowledged (0 after a clean shutdown).
    pub unflushed_results: usize,
}

impl Report {
    /// Everything was delivered.
    pub fn is_clean(&self) -> bool {
        self.unflushed_batches == 0 && self.unflushed_results == 0
    }
}

/// Runs the agent until `shutdown` says to stop and, unless it says
/// [`Shutdown::Exit`], until every job has ended and everything owed to the
/// server is delivered (or the flush timeout passes).
///
/// # Errors
///
/// [`AgentError::Telemetry`] if the telemetry sampler cannot start;
/// [`AgentError::Identity`] without a certificate or usable join token.
/// Losing the server is not an error: the agent reconnects with backoff
/// and resends what is owed.
///
/// # Cancel safety
///
/// Dropping the future abandons running jobs' bookkeeping (their
/// processes are still killed with their tasks); stop it through
/// `shutdown` instead.
pub async fn run_agent(
    config: AgentConfig,
    mut shutdown: watch::Receiver<Shutdown>,
) -> Result<Report, AgentError> {
    // Two agents sharing an identity would take the connection from each
    // other: a state directory belongs to one running agent.
    let (state_dir, _lock) = if config.server.starts_with("https://") {
        let (d, l) =
            crate::identity::lock_state_dir(&config.state_dir, config.state_dir_is_default)?;
        (d, Some(l))
    } else {
        (config.state_dir.clone(), None)
    };
    let identity = Identity::load(&config.server, &config.join_token, &state_dir, &config.name)?;
    let sampler = Sampler::start(Duration::from_secs(2)).map_err(AgentError::Telemetry)?;
    // Ends with the agent (aborted below, and on drop of this future).
    let renewal = AbortOnDrop(tokio::spawn(renew_loop(identity.clone())));
    tracing::info!(
        "jobs are contained by {}",
        config.exec.containment.describe()
    );
    let (events, mut event_rx) = mpsc::channel(EVENTS);
    let mut ledger = Ledger::new(config, events);
    let mut conn: Option<Conn> = None;
    let mut connecting: Option<Connecting> = None;
    let mut failures = 0u32;
    let mut retry_at = Instant::now();
    let mut heartbeat = tokio::time::interval(ledger.heartbeat_every);
    let mut pump_tick = tokio::time::interval(Duration::from_millis(20));
    pump_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = Stopping::new(*shutdown.borrow_and_update());
    let mut shutdown_open = true;
    let far = || Instant::now() + Duration::from_secs(86_400);

    loop {
        if stopping.may_return(&ledger) {
            break;
        }
        if conn.is_none() && connecting.is_none() && Instant::now() >= retry_at {
            let register = ledger.register();
            let config = &ledger.config;
            let (server, identity) = (config.server.clone(), identity.clone());
            let limit = config.connect_timeout;
            connecting = Some(Box::pin(async move {
                tokio::time::timeout(limit, open(server, identity, register))
                    .await
                    .map_err(|_| "timed out".to_string())?
            }));
        }
        let window = ledger.config.window;
        // While connected, output waits for the server to keep up; while
        // not, it is taken (and spilled past the memory bound).
        let take_events = conn.is_none() || (ledger.inflight < window && ledger.unsent < window);
        tokio::select! {
            biased;
            changed = shutdown.changed(), if shutdown_open => {
                if changed.is_err() {
                    shutdown_open = false;
                    continue;
                }
                let asked = *shutdown.borrow_and_update();
                stopping.escalate(asked, &mut ledger, conn.as_ref());
            }
            r = async { match connecting.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if connecting.is_some() => {
                connecting = None;
                match r {
                    Ok((c, welcome)) => {
                        let (in_memory, spilled) = ledger.backlog();
                        tracing::info!(
                            worker = %welcome.worker_id,
                            abandoned = welcome.abandoned_jobs.len(),
                            backlog_in_memory = in_memory,
                            backlog_spilled = spilled,
                            "connected"
                        );
                        failures = 0;
                        ledger.disconnected();
                        ledger.welcomed(welcome);
                        heartbeat = tokio::time::interval(ledger.heartbeat_every);
                        if ledger.draining {
                            let _ = c.tx.try_send(msg(Out::Draining(proto::Draining {})));
                        }
                        conn = Some(c);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = backoff(ledger.config.reconnect_min, ledger.config.reconnect_max, failures);
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot connect");
                        retry_at = Instant::now() + delay;
                    }
                }
            }
            m = async { match conn.as_mut() { Some(c) => c.inbound.message().await, None => std::future::pending().await } }, if conn.is_some() => {
                match m {
                    Ok(Some(proto::ServerMessage { msg: Some(m) })) => {
                        let reply = on_message(&mut ledger, m);
                        if let (Some(r), Some(c)) = (reply, &conn) {
                            let _ = c.tx.try_send(r);
                        }
                    }
                    Ok(Some(proto::ServerMessage { msg: None })) => {}
                    Ok(None) | Err(_) => {
                        if let Err(s) = &m {
                            tracing::warn!(code = ?s.code(), message = s.message(), "connection lost");
                        } else {
                            tracing::warn!("connection closed by the server");
                        }
                        conn = None;
                        ledger.disconnected();
                        failures = failures.saturating_add(1);
                        retry_at = Instant::now() + backoff(ledger.config.reconnect_min, ledger.config.reconnect_max, failures.min(1));
                    }
                }
            }
            e = event_rx.recv(), if take_events => {
                if let Some(e) = e {
                    ledger.job_event(e);
                }
            }
            _ = heartbeat.tick(), if conn.is_some() => {
                let r = sampler.latest();
                let hb = msg(Out::Heartbeat(proto::Heartbeat {
                    cpu_percent: r.cpu_percent,
                    memory_used_mb: r.memory_used_mb,
                    load_1m: r.load_1m,
                    running_jobs: ledger.running() as u32,
                }));
                if let Some(c) = &conn {
                    let _ = c.tx.try_send(hb);
                }
            }
            _ = tokio::time::sleep_until(stopping.drain_deadline().unwrap_or_else(far)), if stopping.drain_deadline().is_some() => {
                stopping.drain_grace_over(&mut ledger);
            }
            _ = tokio::time::sleep_until(retry_at), if conn.is_none() && connecting.is_none() => {}
            _ = pump_tick.tick() => {}
        }
        if let Some(c) = &conn
            && !ledger.pump(&c.tx)
        {
            conn = None;
            ledger.disconnected();
        }
    }
    drop(renewal);
    let (unflushed_batches, unflushed_results) = ledger.unflushed();
    if stopping.level == Shutdown::Exit {
        ledger.cancel_all();
    }
    Ok(Report {
        jobs_run: ledger.jobs_run,
        unflushed_batches,
        unflushed_results,
    })
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One message from the server; returns the reply to send, if any.
fn on_message(ledger: &mut Ledger, m: In) -> Option<proto::AgentMessage> {
    match m {
        In::Welcome(_) => None,
        In::AssignJob(a) => ledger.assign(a),
        In::CancelJob(c) => {
            if let Ok(job) = c.job_id.parse::<JobId>() {
                ledger.cancel(job, c.attempt, Duration::from_millis(c.grace_ms));
            }
            Some(msg(Out::Ack(proto::Ack {
                job_id: c.job_id,
                attempt: c.attempt,
            })))
        }
        In::Drain(_) => {
            tracing::info!("the server drains this worker");
            ledger.server_drained = true;
            None
        }
        In::LogAck(a) => {
            ledger.log_ack(a);
            None
        }
        In::ResultAck(a) => {
            ledger.result_ack(a);
            None
        }
    }
}
