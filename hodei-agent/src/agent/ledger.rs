//! The ledger: every attempt this agent holds, what its process is doing,
//! and what of it the server has yet to receive or confirm (start report,
//! log batches, result), so a reconnect resends exactly what is owed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use hodei_core::{Clock, ExitStatus, JobId, JobSpec, LogStream, SystemClock, TenantId};
use hodei_hwp::proto::{self, agent_message::Msg as Out};
use hodei_hwp::spec_from_wire;
use tokio::sync::{mpsc, oneshot};

use super::AgentConfig;
use super::connection::msg;
use crate::batch::{Batch, batch};
use crate::cap::cap;
use crate::exec::{Finished, run};
use crate::outbox::{Spill, Waiting};

/// An attempt: (job, attempt number).
pub(super) type Key = (JobId, u32);

/// What a job's task tells the ledger.
pub(super) enum JobEvent {
    /// A batch of output, masked and numbered.
    Batch(Key, Batch),
    /// The process ended; the count of batches it produced.
    Finished(Key, Finished, u64),
}

/// Where an attempt's process is.
enum Process {
    /// Running; the sender stops it (SIGTERM, then SIGKILL after the grace).
    Running {
        cancel: Option<oneshot::Sender<Duration>>,
    },
    /// Ended, or never started.
    Ended,
}

/// Whether the server still wants the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Wanted,
    /// The server re-ran it elsewhere or ended it: it is stopped, and only
    /// its log is still delivered.
    Abandoned,
}

/// The start report's delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartReport {
    /// To send on the current connection.
    Owed,
    /// Sent on the current connection, not yet confirmed.
    Sent,
    /// The server has shown it knows (it acknowledged a log batch).
    Known,
    /// Nothing to report (abandoned).
    NotOwed,
}

impl StartReport {
    /// The connection was lost: what was sent but not confirmed goes again.
    fn resend(&mut self) {
        if *self == StartReport::Sent {
            *self = StartReport::Owed;
        }
    }
}

/// The result's delivery.
enum ResultReport {
    /// No result to deliver: still running, abandoned, or confirmed.
    NotOwed,
    /// To send once every log batch before it is sent.
    Owed(proto::JobFinished),
    /// Sent on the current connection, not yet confirmed.
    Sent(proto::JobFinished),
}

impl ResultReport {
    fn is_owed(&self) -> bool {
        !matches!(self, ResultReport::NotOwed)
    }

    fn mark_sent(&mut self) {
        *self = match std::mem::replace(self, ResultReport::NotOwed) {
            ResultReport::Owed(r) => ResultReport::Sent(r),
            other => other,
        };
    }

    /// The connection was lost: a result sent but not confirmed goes again.
    fn resend(&mut self) {
        *self = match std::mem::replace(self, ResultReport::NotOwed) {
            ResultReport::Sent(r) => ResultReport::Owed(r),
            other => other,
        };
    }
}

/// One attempt in the ledger.
struct Attempt {
    id: String,
    started_at_ms: u64,
    process: Process,
    fate: Fate,
    start: StartReport,
    /// Log batches not yet confirmed, in order.
    waiting: VecDeque<Waiting>,
    /// How many of `waiting` went out on the current connection.
    sent: usize,
    result: ResultReport,
}

impl Attempt {
    fn cancel(&mut self, grace: Duration) {
        if let Process::Running { cancel } = &mut self.process
            && let Some(c) = cancel.take()
        {
            let _ = c.send(grace);
        }
    }

    fn is_running(&self) -> bool {
        matches!(self.process, Process::Running { .. })
    }

    /// Nothing left to run, send or confirm.
    fn done(&self) -> bool {
        !self.is_running() && self.waiting.is_empty() && !self.result.is_owed()
    }
}

/// The agent's book: its attempts, what it owes the server, and what
/// shapes new attempts (draining, the worker id it was given).
pub(super) struct Ledger {
    pub(super) config: AgentConfig,
    attempts: HashMap<Key, Attempt>,
    spill: Spill,
    /// Bytes of log sent on this connection and not yet confirmed.
    pub(super) inflight: usize,
    /// Bytes of log waiting to be sent.
    pub(super) unsent: usize,
    pub(super) worker_id: String,
    pub(super) heartbeat_every: Duration,
    pub(super) draining: bool,
    pub(super) server_drained: bool,
    pub(super) jobs_run: u64,
    events: mpsc::Sender<JobEvent>,
}

/// The attempt an acknowledgement names (a malformed id names none).
fn acked_key(job_id: &str, attempt: u32) -> Option<Key> {
    Some((job_id.parse().ok()?, attempt))
}

fn now_ms() -> u64 {
    SystemClock.now().0
}

impl Ledger {
    pub(super) fn register(&self) -> proto::Register {
        proto::Register {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            worker_id: self.worker_id.clone(),
            name: self.config.name.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            capacity: Some(hodei_hwp::resources_to_wire(&self.config.capacity)),
            jobs: self
                .attempts
                .iter()
                .filter(|(_, a)| a.fate == Fate::Wanted && (a.is_running() || a.result.is_owed()))
                .map(|((_, n), a)| proto::HeldJob {
                    job_id: a.id.clone(),
                    attempt: *n,
                    finished: !a.is_running(),
                })
                .collect(),
        }
    }

    pub(super) fn running(&self) -> usize {
        self.attempts.values().filter(|a| a.is_running()).count()
    }

    pub(super) fn cancel_all(&mut self) {
        let grace = self.config.cancel_grace;
        for a in self.attempts.values_mut() {
            a.cancel(grace);
        }
    }

    /// The connection is gone: everything unacknowledged goes again.
    pub(super) fn disconnected(&mut self) {
        self.inflight = 0;
        self.unsent = 0;
        for a in self.attempts.values_mut() {
            a.sent = 0;
            a.start.resend();
            a.result.resend();
            self.unsent += a.waiting.iter().map(Waiting::len).sum::<usize>();
        }
    }

    pub(super) fn welcomed(&mut self, w: proto::Welcome) {
        self.worker_id = w.worker_id;
        self.heartbeat_every = Duration::from_millis(w.heartbeat_interval_ms.max(100));
        let abandoned: HashSet<String> = w.abandoned_jobs.into_iter().collect();
        let grace = self.config.cancel_grace;
        for a in self.attempts.values_mut() {
            if abandoned.contains(&a.id) {
                // Re-run elsewhere or cancelled: stop it and forget its
                // result; its log is still delivered.
                a.fate = Fate::Abandoned;
                a.start = StartReport::NotOwed;
                a.result = ResultReport::NotOwed;
                a.cancel(grace);
            }
        }
        self.attempts.retain(|_, a| !a.done());
    }

    pub(super) fn assign(&mut self, a: proto::AssignJob) -> Option<proto::AgentMessage> {
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
            process: Process::Ended,
            fate: Fate::Wanted,
            start: StartReport::Owed,
            waiting: VecDeque::new(),
            sent: 0,
            result: ResultReport::NotOwed,
        };
        let refuse = if self.draining || self.server_drained {
            Some("the agent is draining".to_string())
        } else {
            spec.as_ref().err().map(|e| format!("bad spec: {e}"))
        };
        match (refuse, spec) {
            (None, Ok(spec)) => {
                let (cancel_tx, cancel_rx) = oneshot::channel();
                attempt.process = Process::Running {
                    cancel: Some(cancel_tx),
                };
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
                attempt.result = ResultReport::Owed(proto::JobFinished {
                    job_id: attempt.id.clone(),
                    attempt: key.1,
                    exit: Some(hodei_hwp::exit_to_wire(&ExitStatus::NotStarted)),
                    duration_ms: 0,
                    peak_memory_mb: 0,
                    timed_out: false,
                    log_batches: 1,
                    outputs: Default::default(),
                });
            }
        }
        self.attempts.insert(key, attempt);
        Some(ack)
    }

    pub(super) fn job_event(&mut self, e: JobEvent) {
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
                a.process = Process::Ended;
                if a.fate == Fate::Wanted {
                    a.result = ResultReport::Owed(proto::JobFinished {
                        job_id: a.id.clone(),
                        attempt: key.1,
                        exit: Some(hodei_hwp::exit_to_wire(&f.exit)),
                        duration_ms: f.duration.as_millis() as u64,
                        peak_memory_mb: f.peak_memory_mb,
                        timed_out: f.timed_out,
                        log_batches: batches,
                        outputs: f.outputs.into_iter().collect(),
                    });
                }
                if a.done() {
                    self.attempts.remove(&key);
                }
            }
        }
    }

    /// Forgets an attempt with nothing left to run, send or confirm.
    pub(super) fn forget_if_done(&mut self, key: Key) {
        if self.attempts.get(&key).is_some_and(Attempt::done) {
            self.attempts.remove(&key);
        }
    }

    pub(super) fn log_ack(&mut self, ack: proto::LogAck) {
        let Some(key) = acked_key(&ack.job_id, ack.attempt) else {
            return;
        };
        let Some(a) = self.attempts.get_mut(&key) else {
            return;
        };
        a.start = match a.start {
            StartReport::NotOwed => StartReport::NotOwed,
            _ => StartReport::Known,
        };
        while a.sent > 0 && a.waiting.front().is_some_and(|w| w.seq <= ack.seq) {
            if let Some(w) = a.waiting.pop_front() {
                self.inflight = self.inflight.saturating_sub(w.len());
                a.sent -= 1;
                self.spill.release(w);
            }
        }
        self.forget_if_done(key);
    }

    pub(super) fn result_ack(&mut self, ack: proto::ResultAck) {
        let Some(key) = acked_key(&ack.job_id, ack.attempt) else {
            return;
        };
        if let Some(a) = self.attempts.get_mut(&key)
            && matches!(a.result, ResultReport::Sent(_))
        {
            a.result = ResultReport::NotOwed;
        }
        self.forget_if_done(key);
    }

    /// Sends what is owed, in order per attempt, within the window. Returns
    /// false when the connection is gone.
    pub(super) fn pump(&mut self, tx: &mpsc::Sender<proto::AgentMessage>) -> bool {
        use mpsc::error::TrySendError;
        let window = self.config.window;
        for (&(_, attempt), a) in self.attempts.iter_mut() {
            let send = |m: proto::AgentMessage| match tx.try_send(m) {
                Ok(()) => Ok(true),
                Err(TrySendError::Full(_)) => Ok(false),
                Err(TrySendError::Closed(_)) => Err(()),
            };
            if a.start == StartReport::Owed {
                match send(msg(Out::JobStarted(proto::JobStarted {
                    job_id: a.id.clone(),
                    attempt,
                    started_at_ms: a.started_at_ms,
                }))) {
                    Ok(true) => a.start = StartReport::Sent,
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
                && !a.is_running()
                && let ResultReport::Owed(r) = &a.result
            {
                match send(msg(Out::JobFinished(r.clone()))) {
                    Ok(true) => a.result.mark_sent(),
                    Ok(false) => return true,
                    Err(()) => return false,
                }
            }
        }
        true
    }
}

impl Ledger {
    pub(super) fn new(config: AgentConfig, events: mpsc::Sender<JobEvent>) -> Self {
        Ledger {
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
        }
    }

    /// No attempt left at all.
    pub(super) fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    /// Spill figures, for the log: batches in memory, batches on disk.
    pub(super) fn backlog(&self) -> (usize, usize) {
        (self.spill.in_memory(), self.spill.spilled())
    }

    /// A cancel from the server for one attempt.
    pub(super) fn cancel(&mut self, job: JobId, attempt: u32, grace: Duration) {
        if let Some(a) = self.attempts.get_mut(&(job, attempt)) {
            tracing::info!(job = %a.id, "cancel requested");
            a.cancel(grace);
        }
    }

    /// What was never confirmed when the agent returns: (batches, results).
    pub(super) fn unflushed(&self) -> (usize, usize) {
        (
            self.attempts.values().map(|a| a.waiting.len()).sum(),
            self.attempts
                .values()
                .filter(|a| a.result.is_owed())
                .count(),
        )
    }
}

/// Runs one attempt: the process, the output cap, batching, and the
/// events that carry them to the ledger.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> proto::JobFinished {
        proto::JobFinished {
            job_id: "j".into(),
            attempt: 1,
            ..Default::default()
        }
    }

    /// A connection lost at any point of a result's delivery leaves it
    /// owed until the server confirms it.
    #[test]
    fn a_result_is_owed_until_confirmed_whatever_the_connection_does() {
        let mut r = ResultReport::Owed(report());
        r.resend();
        assert!(
            matches!(r, ResultReport::Owed(_)),
            "a lost connection drops nothing"
        );
        r.mark_sent();
        assert!(matches!(r, ResultReport::Sent(_)));
        r.mark_sent();
        assert!(
            matches!(r, ResultReport::Sent(_)),
            "sending twice changes nothing"
        );
        r.resend();
        assert!(
            matches!(r, ResultReport::Owed(_)),
            "sent, not confirmed: owed again"
        );
        let mut none = ResultReport::NotOwed;
        none.resend();
        none.mark_sent();
        assert!(matches!(none, ResultReport::NotOwed));
    }

    #[test]
    fn a_start_report_sent_goes_again_after_a_lost_connection_unless_known() {
        for (before, after) in [
            (StartReport::Owed, StartReport::Owed),
            (StartReport::Sent, StartReport::Owed),
            (StartReport::Known, StartReport::Known),
            (StartReport::NotOwed, StartReport::NotOwed),
        ] {
            let mut s = before;
            s.resend();
            assert_eq!(s, after, "{before:?}");
        }
    }
}
