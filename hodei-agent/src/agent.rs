//! The agent: one connection to the server, the jobs it runs, and what it
//! still owes the server.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use hodei_core::{Clock, ExitStatus, JobId, JobSpec, LogStream, Resources, SystemClock, TenantId};
use hodei_hwp::client::connect_agent;
use hodei_hwp::proto::{self, agent_message::Msg as Out, server_message::Msg as In};
use hodei_hwp::spec_from_wire;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::batch::{Batch, BatchConfig, batch};
use crate::cap::cap;
use crate::exec::{ExecConfig, Finished, run};
use crate::outbox::{Spill, Waiting};
use crate::telemetry::Sampler;

/// How far the agent is into shutting down. Each step includes the ones
/// before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    /// Running normally.
    #[default]
    Run,
    /// Take no new jobs, let running ones finish within the drain grace,
    /// then cancel them; flush everything; return.
    Drain,
    /// Cancel running jobs now; still flush everything; return.
    Cancel,
    /// Return at once.
    Exit,
}

/// Everything the agent is told.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The server, `http://host:port`.
    pub server: String,
    /// The join token.
    pub join_token: String,
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
        AgentConfig {
            server: server.into(),
            join_token: join_token.into(),
            name: host_name(),
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

/// The machine's host name, or `"agent"`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".into())
}

/// Why the agent stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The telemetry thread could not start.
    #[error("telemetry: {0}")]
    Telemetry(std::io::Error),
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

type Key = (JobId, u32);

enum JobEvent {
    Batch(Key, Batch),
    Finished(Key, Finished, u64),
}

struct Attempt {
    id: String,
    started_at_ms: u64,
    cancel: Option<oneshot::Sender<Duration>>,
    running: bool,
    abandoned: bool,
    /// The server has shown it knows the attempt started.
    started_known: bool,
    started_sent: bool,
    waiting: VecDeque<Waiting>,
    /// How many of `waiting` went out on the current connection.
    sent: usize,
    result: Option<proto::JobFinished>,
    result_sent: bool,
}

impl Attempt {
    fn cancel(&mut self, grace: Duration) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(grace);
        }
    }

    fn done(&self) -> bool {
        !self.running && self.waiting.is_empty() && self.result.is_none()
    }
}

struct Conn {
    tx: mpsc::Sender<proto::AgentMessage>,
    inbound: tonic::Streaming<proto::ServerMessage>,
}

/// Messages queued toward the server at most; the window bounds bytes,
/// this bounds messages. Full: sending pauses until the next pump.
const OUTBOUND: usize = 1024;
/// Job events queued toward the core; full: the job's output waits.
const EVENTS: usize = 256;

type Connecting = Pin<Box<dyn Future<Output = Result<(Conn, proto::Welcome), String>> + Send>>;

struct Core {
    config: AgentConfig,
    attempts: HashMap<Key, Attempt>,
    spill: Spill,
    inflight: usize,
    unsent: usize,
    worker_id: String,
    heartbeat_every: Duration,
    draining: bool,
    server_drained: bool,
    jobs_run: u64,
    events: mpsc::Sender<JobEvent>,
}

/// The attempt an acknowledgement names (a malformed id names none).
fn acked_key(job_id: &str, attempt: u32) -> Option<Key> {
    Some((job_id.parse().ok()?, attempt))
}

fn msg(m: Out) -> proto::AgentMessage {
    proto::AgentMessage { msg: Some(m) }
}

fn now_ms() -> u64 {
    SystemClock.now().0
}

/// Full jitter: a delay drawn uniformly below an exponentially growing cap,
/// so many agents cut off together do not come back together.
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let cap = min
        .saturating_mul(1u32 << failures.min(20))
        .min(max)
        .max(Duration::from_millis(1));
    cap.mul_f64(rand::random::<f64>())
}

async fn open(
    server: String,
    token: String,
    register: proto::Register,
) -> Result<(Conn, proto::Welcome), String> {
    let mut client = connect_agent(&server, &token)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(OUTBOUND);
    tx.send(msg(Out::Register(register)))
        .await
        .map_err(|_| "stream closed".to_string())?;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(proto::ServerMessage {
            msg: Some(In::Welcome(w)),
        })) => Ok((Conn { tx, inbound }, w)),
        Ok(_) => Err("the server did not send Welcome first".into()),
        Err(s) => Err(format!("{}: {}", s.code(), s.message())),
    }
}

async fn job_task(
    key: Key,
    spec: JobSpec,
    config: AgentConfig,
    events: mpsc::Sender<JobEvent>,
    cancel: oneshot::Receiver<Duration>,
) {
    let (out_tx, out_rx) = mpsc::channel(16);
    let (cap_tx, cap_rx) = mpsc::channel(16);
    let (batch_tx, mut batch_rx) = mpsc::channel(4);
    let forward = {
        let events = events.clone();
        async move {
            while let Some(b) = batch_rx.recv().await {
                if events.send(JobEvent::Batch(key, b)).await.is_err() {
                    break;
                }
            }
        }
    };
    let (finished, _, batches, ()) = tokio::join!(
        run(&spec, &config.exec, out_tx, cancel),
        cap(out_rx, cap_tx, config.max_log_bytes),
        batch(cap_rx, batch_tx, config.batch),
        forward,
    );
    let _ = events
        .send(JobEvent::Finished(key, finished, batches))
        .await;
}

impl Core {
    fn register(&self) -> proto::Register {
        let cap = self.config.capacity;
        proto::Register {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            worker_id: self.worker_id.clone(),
            name: self.config.name.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            capacity: Some(proto::Resources {
                cpu_millis: cap.cpu_millis,
                memory_mb: cap.memory_mb,
                gpus: cap.gpus,
            }),
            jobs: self
                .attempts
                .iter()
                .filter(|(_, a)| !a.abandoned && (a.running || a.result.is_some()))
                .map(|((_, n), a)| proto::HeldJob {
                    job_id: a.id.clone(),
                    attempt: *n,
                    finished: !a.running,
                })
                .collect(),
        }
    }

    fn running(&self) -> usize {
        self.attempts.values().filter(|a| a.running).count()
    }

    fn cancel_all(&mut self) {
        let grace = self.config.cancel_grace;
        for a in self.attempts.values_mut() {
            a.cancel(grace);
        }
    }

    /// The connection is gone: everything unacknowledged goes again.
    fn disconnected(&mut self) {
        self.inflight = 0;
        self.unsent = 0;
        for a in self.attempts.values_mut() {
            a.sent = 0;
            a.started_sent = false;
            a.result_sent = false;
            self.unsent += a.waiting.iter().map(Waiting::len).sum::<usize>();
        }
    }

    fn welcomed(&mut self, w: proto::Welcome) {
        self.worker_id = w.worker_id;
        self.heartbeat_every = Duration::from_millis(w.heartbeat_interval_ms.max(100));
        let abandoned: HashSet<String> = w.abandoned_jobs.into_iter().collect();
        let grace = self.config.cancel_grace;
        for a in self.attempts.values_mut() {
            if abandoned.contains(&a.id) {
                // Re-run elsewhere or cancelled: stop it and forget its
                // result; its log is still delivered.
                a.abandoned = true;
                a.result = None;
                a.cancel(grace);
            }
        }
        self.attempts.retain(|_, a| !a.done());
    }

    fn assign(&mut self, a: proto::AssignJob) -> Option<proto::AgentMessage> {
        let Ok(job) = a.job_id.parse::<JobId>() else {
            tracing::warn!(job = %a.job_id, "assignment with a bad job id ignored");
            return None;
        };
        let key = (job, a.attempt);
        let ack = msg(Out::Ack(proto::Ack {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
        }));
        if self.attempts.contains_key(&key) {
            return Some(ack);
        }
        let spec = a
            .spec
            .ok_or_else(|| "no spec".to_string())
            .and_then(|s| spec_from_wire(s, &TenantId::default()).map_err(|e| e.to_string()));
        let mut attempt = Attempt {
            id: a.job_id,
            started_at_ms: now_ms(),
            cancel: None,
            running: false,
            abandoned: false,
            started_known: false,
            started_sent: false,
            waiting: VecDeque::new(),
            sent: 0,
            result: None,
            result_sent: false,
        };
        let refuse = if self.draining || self.server_drained {
            Some("the agent is draining".to_string())
        } else {
            spec.as_ref().err().map(|e| format!("bad spec: {e}"))
        };
        match (refuse, spec) {
            (None, Ok(spec)) => {
                let (cancel_tx, cancel_rx) = oneshot::channel();
                attempt.cancel = Some(cancel_tx);
                attempt.running = true;
                self.jobs_run += 1;
                tracing::info!(job = %attempt.id, attempt = key.1, "running");
                tokio::spawn(job_task(
                    key,
                    spec,
                    self.config.clone(),
                    self.events.clone(),
                    cancel_rx,
                ));
            }
            (reason, _) => {
                let reason = reason.unwrap_or_default();
                tracing::warn!(job = %attempt.id, %reason, "assignment refused");
                let note = Batch {
                    seq: 0,
                    stream: LogStream::System,
                    at: SystemClock.now(),
                    data: format!("hodei-agent: not started: {reason}\n").into_bytes(),
                };
                self.unsent += note.data.len();
                attempt.waiting.push_back(self.spill.hold(note));
                attempt.result = Some(proto::JobFinished {
                    job_id: attempt.id.clone(),
                    attempt: key.1,
                    exit: Some(hodei_hwp::exit_to_wire(&ExitStatus::NotStarted)),
                    duration_ms: 0,
                    peak_memory_mb: 0,
                    timed_out: false,
                    log_batches: 1,
                });
            }
        }
        self.attempts.insert(key, attempt);
        Some(ack)
    }

    fn job_event(&mut self, e: JobEvent) {
        match e {
            JobEvent::Batch(key, b) => {
                let Some(a) = self.attempts.get_mut(&key) else {
                    return;
                };
                self.unsent += b.data.len();
                a.waiting.push_back(self.spill.hold(b));
            }
            JobEvent::Finished(key, f, batches) => {
                let Some(a) = self.attempts.get_mut(&key) else {
                    return;
                };
                tracing::info!(job = %a.id, attempt = key.1, exit = %f.exit, "finished");
                a.running = false;
                a.cancel = None;
                if !a.abandoned {
                    a.result = Some(proto::JobFinished {
                        job_id: a.id.clone(),
                        attempt: key.1,
                        exit: Some(hodei_hwp::exit_to_wire(&f.exit)),
                        duration_ms: f.duration.as_millis() as u64,
                        peak_memory_mb: f.peak_memory_mb,
                        timed_out: f.timed_out,
                        log_batches: batches,
                    });
                }
                if a.done() {
                    self.attempts.remove(&key);
                }
            }
        }
    }

    /// Forgets an attempt with nothing left to run, send or confirm.
    fn forget_if_done(&mut self, key: Key) {
        if self.attempts.get(&key).is_some_and(Attempt::done) {
            self.attempts.remove(&key);
        }
    }

    fn log_ack(&mut self, ack: proto::LogAck) {
        let Some(key) = acked_key(&ack.job_id, ack.attempt) else {
            return;
        };
        let Some(a) = self.attempts.get_mut(&key) else {
            return;
        };
        a.started_known = true;
        while a.sent > 0 && a.waiting.front().is_some_and(|w| w.seq <= ack.seq) {
            if let Some(w) = a.waiting.pop_front() {
                self.inflight = self.inflight.saturating_sub(w.len());
                a.sent -= 1;
                self.spill.release(w);
            }
        }
        self.forget_if_done(key);
    }

    fn result_ack(&mut self, ack: proto::ResultAck) {
        let Some(key) = acked_key(&ack.job_id, ack.attempt) else {
            return;
        };
        if let Some(a) = self.attempts.get_mut(&key)
            && a.result_sent
        {
            a.result = None;
        }
        self.forget_if_done(key);
    }

    /// Sends what is owed, in order per attempt, within the window. Returns
    /// false when the connection is gone.
    fn pump(&mut self, tx: &mpsc::Sender<proto::AgentMessage>) -> bool {
        use mpsc::error::TrySendError;
        let window = self.config.window;
        for (&(_, attempt), a) in self.attempts.iter_mut() {
            let send = |m: proto::AgentMessage| match tx.try_send(m) {
                Ok(()) => Ok(true),
                Err(TrySendError::Full(_)) => Ok(false),
                Err(TrySendError::Closed(_)) => Err(()),
            };
            if !a.started_sent && !a.started_known && !a.abandoned {
                match send(msg(Out::JobStarted(proto::JobStarted {
                    job_id: a.id.clone(),
                    attempt,
                    started_at_ms: a.started_at_ms,
                }))) {
                    Ok(true) => a.started_sent = true,
                    Ok(false) => return true,
                    Err(()) => return false,
                }
            }
            while a.sent < a.waiting.len() && self.inflight < window {
                let w = &a.waiting[a.sent];
                let data = match self.spill.read(w) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read a spilled log batch");
                        Vec::new()
                    }
                };
                let len = w.len();
                let m = msg(Out::LogBatch(proto::LogBatch {
                    job_id: a.id.clone(),
                    attempt,
                    seq: w.seq,
                    stream: hodei_hwp::log_stream_to_wire(w.stream),
                    at_ms: w.at.0,
                    data,
                }));
                match send(m) {
                    Ok(true) => {
                        a.sent += 1;
                        self.inflight += len;
                        self.unsent = self.unsent.saturating_sub(len);
                    }
                    Ok(false) => return true,
                    Err(()) => return false,
                }
            }
            if a.sent == a.waiting.len()
                && !a.running
                && !a.result_sent
                && let Some(r) = &a.result
            {
                match send(msg(Out::JobFinished(r.clone()))) {
                    Ok(true) => a.result_sent = true,
                    Ok(false) => return true,
                    Err(()) => return false,
                }
            }
        }
        true
    }
}

/// Runs the agent until `shutdown` says to stop and, unless it says
/// [`Shutdown::Exit`], until every job has ended and everything owed to the
/// server is delivered (or the flush timeout passes).
pub async fn run_agent(
    config: AgentConfig,
    mut shutdown: watch::Receiver<Shutdown>,
) -> Result<Report, AgentError> {
    let sampler = Sampler::start(Duration::from_secs(2)).map_err(AgentError::Telemetry)?;
    tracing::info!(
        "jobs are contained by {}",
        config.exec.containment.describe()
    );
    let (events, mut event_rx) = mpsc::channel(EVENTS);
    let mut core = Core {
        spill: Spill::new(config.spill_dir.clone(), config.memory_limit),
        config,
        attempts: HashMap::new(),
        inflight: 0,
        unsent: 0,
        worker_id: String::new(),
        heartbeat_every: Duration::from_secs(5),
        draining: false,
        server_drained: false,
        jobs_run: 0,
        events,
    };
    let mut conn: Option<Conn> = None;
    let mut connecting: Option<Connecting> = None;
    let mut failures = 0u32;
    let mut retry_at = Instant::now();
    let mut heartbeat = tokio::time::interval(core.heartbeat_every);
    let mut pump_tick = tokio::time::interval(Duration::from_millis(20));
    pump_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut level = *shutdown.borrow_and_update();
    let mut shutdown_open = true;
    let mut drain_deadline: Option<Instant> = None;
    let mut flush_deadline: Option<Instant> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);

    loop {
        if level == Shutdown::Exit {
            break;
        }
        if level >= Shutdown::Drain {
            if core.attempts.is_empty() {
                break;
            }
            if core.running() == 0 {
                let d = *flush_deadline
                    .get_or_insert_with(|| Instant::now() + core.config.flush_timeout);
                if Instant::now() >= d {
                    tracing::error!(
                        "flush timeout: giving up on what the server has not acknowledged"
                    );
                    break;
                }
            }
        }
        if conn.is_none() && connecting.is_none() && Instant::now() >= retry_at {
            let register = core.register();
            let (server, token) = (core.config.server.clone(), core.config.join_token.clone());
            let limit = core.config.connect_timeout;
            connecting = Some(Box::pin(async move {
                tokio::time::timeout(limit, open(server, token, register))
                    .await
                    .map_err(|_| "timed out".to_string())?
            }));
        }
        let window = core.config.window;
        // While connected, output waits for the server to keep up; while
        // not, it is taken (and spilled past the memory bound).
        let take_events = conn.is_none() || (core.inflight < window && core.unsent < window);
        tokio::select! {
            biased;
            changed = shutdown.changed(), if shutdown_open => {
                if changed.is_err() {
                    shutdown_open = false;
                    continue;
                }
                let new = *shutdown.borrow_and_update();
                if new > level {
                    level = new;
                    match level {
                        Shutdown::Drain => {
                            tracing::info!(grace = ?core.config.drain_grace, "draining");
                            core.draining = true;
                            drain_deadline = Some(Instant::now() + core.config.drain_grace);
                            if let Some(c) = &conn {
                                let _ = c.tx.try_send(msg(Out::Draining(proto::Draining {})));
                            }
                        }
                        Shutdown::Cancel => {
                            tracing::info!("cancelling running jobs");
                            core.draining = true;
                            core.cancel_all();
                        }
                        Shutdown::Run | Shutdown::Exit => {}
                    }
                }
            }
            r = async { match connecting.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if connecting.is_some() => {
                connecting = None;
                match r {
                    Ok((c, welcome)) => {
                        tracing::info!(
                            worker = %welcome.worker_id,
                            abandoned = welcome.abandoned_jobs.len(),
                            backlog_in_memory = core.spill.in_memory(),
                            backlog_spilled = core.spill.spilled(),
                            "connected"
                        );
                        failures = 0;
                        core.disconnected();
                        core.welcomed(welcome);
                        heartbeat = tokio::time::interval(core.heartbeat_every);
                        if core.draining {
                            let _ = c.tx.try_send(msg(Out::Draining(proto::Draining {})));
                        }
                        conn = Some(c);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = backoff(core.config.reconnect_min, core.config.reconnect_max, failures);
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot connect");
                        retry_at = Instant::now() + delay;
                    }
                }
            }
            m = async { match conn.as_mut() { Some(c) => c.inbound.message().await, None => std::future::pending().await } }, if conn.is_some() => {
                match m {
                    Ok(Some(proto::ServerMessage { msg: Some(m) })) => {
                        let reply = match m {
                            In::Welcome(_) => None,
                            In::AssignJob(a) => core.assign(a),
                            In::CancelJob(c) => {
                                if let Ok(job) = c.job_id.parse::<JobId>()
                                    && let Some(a) = core.attempts.get_mut(&(job, c.attempt))
                                {
                                    tracing::info!(job = %a.id, "cancel requested");
                                    a.cancel(Duration::from_millis(c.grace_ms));
                                }
                                Some(msg(Out::Ack(proto::Ack { job_id: c.job_id, attempt: c.attempt })))
                            }
                            In::Drain(_) => {
                                tracing::info!("the server drains this worker");
                                core.server_drained = true;
                                None
                            }
                            In::LogAck(a) => {
                                core.log_ack(a);
                                None
                            }
                            In::ResultAck(a) => {
                                core.result_ack(a);
                                None
                            }
                        };
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
                        core.disconnected();
                        failures = failures.saturating_add(1);
                        retry_at = Instant::now() + backoff(core.config.reconnect_min, core.config.reconnect_max, failures.min(1));
                    }
                }
            }
            e = event_rx.recv(), if take_events => {
                if let Some(e) = e {
                    core.job_event(e);
                }
            }
            _ = heartbeat.tick(), if conn.is_some() => {
                let r = sampler.latest();
                let hb = msg(Out::Heartbeat(proto::Heartbeat {
                    cpu_percent: r.cpu_percent,
                    memory_used_mb: r.memory_used_mb,
                    load_1m: r.load_1m,
                    running_jobs: core.running() as u32,
                }));
                if let Some(c) = &conn {
                    let _ = c.tx.try_send(hb);
                }
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(far)), if drain_deadline.is_some() => {
                tracing::warn!("drain grace over: cancelling running jobs");
                drain_deadline = None;
                core.cancel_all();
            }
            _ = tokio::time::sleep_until(retry_at), if conn.is_none() && connecting.is_none() => {}
            _ = pump_tick.tick() => {}
        }
        if let Some(c) = &conn
            && !core.pump(&c.tx)
        {
            conn = None;
            core.disconnected();
        }
    }
    let unflushed_batches = core.attempts.values().map(|a| a.waiting.len()).sum();
    let unflushed_results = core
        .attempts
        .values()
        .filter(|a| a.result.is_some())
        .count();
    if level == Shutdown::Exit {
        core.cancel_all();
    }
    Ok(Report {
        jobs_run: core.jobs_run,
        unflushed_batches,
        unflushed_results,
    })
}
