//! The engine task: takes commands in rounds, one function per command.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hodei_core::{Bus, Clock, Event, JobId, JobState, SystemClock, TenantId, WorkerId};
use hodei_sched::{Action, JobRequest, Scheduler, WorkerSpec};
use hodei_store::{AttemptPatch, Store};
use tokio::sync::{mpsc, oneshot};

use super::agent::{AgentLink, ToAgent, Welcome};
use super::pending::{InFlight, NewJob, Round};
use super::{Command, EngineConfig, EngineError, Registration, Reply, SubmitReply};
use crate::server::engine::metrics::{Metrics, Snapshot};

/// Commands taken into one round at most.
const ROUND: usize = 1024;
/// Rounds queued for the store and not yet landed; past it, no command
/// is taken until one lands (the command queue then fills and callers
/// wait).
const ROUNDS_IN_FLIGHT: usize = 64;

pub(super) struct Core<S> {
    pub(super) sched: Scheduler<SystemClock>,
    pub(super) store: Arc<S>,
    /// An idle subscriber that never reads: it keeps the bus storing
    /// events even when nobody watches, so watchers can resume from a
    /// recent point. It never slows the publisher.
    _journal: hodei_core::Subscriber<Event>,
    pub(super) bus: Bus<Event>,
    pub(super) agents: HashMap<WorkerId, (u64, Box<dyn AgentLink>)>,
    pub(super) config: EngineConfig,
    pub(super) metrics: Arc<Metrics>,
    /// When each job not yet started was submitted.
    pub(super) submitted_at: HashMap<JobId, Instant>,
    /// The round being gathered.
    pub(super) round: Round,
    /// Rounds whose commit has not landed, oldest first.
    pub(super) in_flight: InFlight,
    /// Idempotency keys of new jobs whose insert has not landed.
    pub(super) pending_keys: HashMap<(TenantId, String), JobId>,
    /// Submissions repeating one of those keys: answered when it lands.
    pub(super) key_waiters: HashMap<JobId, Vec<SubmitReply>>,
}

impl<S: Store> Core<S> {
    pub(super) fn new(
        sched: Scheduler<SystemClock>,
        store: Arc<S>,
        bus: Bus<Event>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Core {
            sched,
            store,
            _journal: bus.subscribe(),
            bus,
            agents: HashMap::new(),
            config,
            metrics,
            submitted_at: HashMap::new(),
            round: Round::default(),
            in_flight: InFlight::new(),
            pending_keys: HashMap::new(),
            key_waiters: HashMap::new(),
        }
    }

    /// What recovery decided goes out as the first round.
    pub(super) fn recovered(&mut self, actions: Vec<Action>) {
        self.round.actions.extend(actions);
    }

    pub(super) async fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut open = true;
        while open || !self.in_flight.is_empty() || !self.round.is_empty() {
            if !self.round.is_empty() {
                self.persist().await;
                continue;
            }
            let wait = self
                .sched
                .next_deadline()
                .map(|d| d.saturating_since(SystemClock.now()));
            tokio::select! {
                // Landed rounds first: their assignments are waiting.
                biased;
                Some(landed) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.land(landed);
                }
                cmd = rx.recv(), if open && self.in_flight.len() < ROUNDS_IN_FLIGHT => match cmd {
                    Some(c) => {
                        self.handle(c).await;
                        // Whatever else is already waiting joins this
                        // round: one batch, one commit.
                        for _ in 1..ROUND {
                            let Ok(c) = rx.try_recv() else { break };
                            self.handle(c).await;
                        }
                    }
                    // Every handle is gone: finish what is in flight.
                    None => open = false,
                },
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() && open => {
                    let actions = self.sched.tick();
                    self.round.actions.extend(actions);
                }
            }
        }
    }

    /// One command: each has its function, which changes the scheduler
    /// and adds what it caused to the current round.
    async fn handle(&mut self, c: Command) {
        match c {
            Command::Snapshot { reply } => self.snapshot(reply),
            Command::Submit {
                job,
                done,
                begun,
                audit,
                reply,
            } => self.submit(*job, done, begun, audit, reply).await,
            Command::Audit { entry } => self.round.audit.push(entry),
            Command::Cancel { job, reply } => {
                let r = self.sched.cancel(job);
                self.owe(r, reply);
            }
            Command::Drain { worker, reply } => self.drain(worker, reply),
            Command::CloseAgents { reply } => self.close_agents(reply),
            Command::Connect {
                reg,
                link,
                conn,
                reply,
            } => self.connect(reg, link, conn, reply),
            Command::Disconnected { worker, conn } => self.disconnected(worker, conn),
            Command::Started {
                worker,
                job,
                attempt,
                at,
            } => self.started(worker, job, attempt, at),
            Command::Finished {
                worker,
                job,
                attempt,
                outcome,
                exit,
                peak_memory_mb,
                reply,
            } => self.finished(worker, (job, attempt), outcome, exit, peak_memory_mb, reply),
        }
    }

    fn snapshot(&self, reply: oneshot::Sender<Result<Snapshot, EngineError>>) {
        let _ = reply.send(Ok(Snapshot {
            queue_depths: self.sched.queue_depths(),
            stats: self.sched.stats(),
        }));
    }

    /// Every agent's stream ends: the server is stopping.
    fn close_agents(&mut self, reply: Reply) {
        for (_, (_, link)) in self.agents.drain() {
            let _ = link.try_send(ToAgent::Close);
        }
        let _ = reply.send(Ok(()));
    }

    fn disconnected(&mut self, worker: WorkerId, conn: u64) {
        // A stream that a newer connection of the same worker replaced
        // changes nothing.
        if self.agents.get(&worker).is_some_and(|(c, _)| *c == conn) {
            self.agents.remove(&worker);
            // No new work until it reconnects; its jobs keep their places
            // until the heartbeat timeout says otherwise.
            let _ = self.sched.cluster().drain(worker);
        }
    }

    fn finished(
        &mut self,
        worker: WorkerId,
        (job, attempt): (JobId, u32),
        outcome: hodei_sched::AttemptOutcome,
        exit: hodei_core::ExitStatus,
        peak_memory_mb: u64,
        reply: Reply,
    ) {
        let r = self.sched.job_finished(worker, job, attempt, outcome);
        if r.is_ok() {
            let patch = AttemptPatch::Finished {
                at: SystemClock.now(),
                exit,
                peak_memory_mb,
            };
            self.round.patches.push((job, attempt, patch));
        }
        // A report the state machine refuses (a stale attempt, a job
        // already ended) is answered all the same: there is nothing more
        // to do with it.
        let actions = r.unwrap_or_else(|e| {
            tracing::warn!(%job, %worker, error = %e, "finish report refused");
            Vec::new()
        });
        self.round.actions.extend(actions);
        self.round.replies.push((reply, Ok(())));
    }

    /// Answers `reply` once this round is stored, with the scheduler's
    /// verdict.
    fn owe(&mut self, r: Result<Vec<Action>, hodei_sched::SchedError>, reply: Reply) {
        match r {
            Ok(actions) => {
                self.round.actions.extend(actions);
                self.round.replies.push((reply, Ok(())));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    async fn submit(
        &mut self,
        job: hodei_core::Job,
        done: Vec<(JobId, bool)>,
        begun: Instant,
        audit: Option<hodei_store::AuditEntry>,
        reply: SubmitReply,
    ) {
        let record = |round: &mut Round, target: JobId, outcome: String| {
            if let Some(mut a) = audit.clone() {
                a.target = target.to_string();
                a.outcome = outcome;
                round.audit.push(a);
            }
        };
        let key = job
            .spec
            .idempotency_key
            .clone()
            .map(|k| (job.spec.tenant.clone(), k));
        if let Some(k) = &key {
            // The engine is the only writer of new jobs, so the keys in
            // flight and the store together are every key taken.
            if let Some(first) = self.pending_keys.get(k) {
                record(&mut self.round, *first, "ok: an earlier job".into());
                self.key_waiters.entry(*first).or_default().push(reply);
                return;
            }
            match self.store.find_idempotent(&k.0, &k.1).await {
                Ok(Some(existing)) => {
                    record(&mut self.round, existing.id, "ok: an earlier job".into());
                    let _ = reply.send(Ok((existing, false)));
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    record(&mut self.round, job.id, format!("refused: {e}"));
                    let _ = reply.send(Err(e.into()));
                    return;
                }
            }
        }
        for (dep, succeeded) in done {
            if self.sched.lifecycle(dep).is_none() {
                self.sched.record_finished(dep, succeeded);
            }
        }
        match self.sched.submit(JobRequest::from_spec(job.id, &job.spec)) {
            Ok(actions) => {
                // In the same commit as the job.
                record(&mut self.round, job.id, "ok".into());
                if let Some(k) = key {
                    self.pending_keys.insert(k, job.id);
                }
                self.submitted_at.insert(job.id, begun);
                self.round.actions.extend(actions);
                self.round.new_jobs.push(NewJob {
                    entered: job.state,
                    job,
                    reply,
                });
            }
            Err(e) => {
                record(&mut self.round, job.id, format!("refused: {e}"));
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn drain(&mut self, worker: WorkerId, reply: Reply) {
        let r = self.sched.worker_draining(worker);
        if r.is_ok()
            && let Some((_, link)) = self.agents.get(&worker)
        {
            let _ = link.try_send(ToAgent::Drain);
        }
        self.owe(r, reply);
    }

    fn connect(
        &mut self,
        reg: Registration,
        link: Box<dyn AgentLink>,
        conn: u64,
        reply: oneshot::Sender<Result<Welcome, EngineError>>,
    ) {
        let worker = reg.worker;
        let spec = WorkerSpec {
            id: worker,
            labels: reg.labels,
            capacity: reg.capacity,
        };
        let (actions, refused) = match self.sched.worker_rejoined(spec, &reg.held) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        let welcome = Welcome {
            worker,
            heartbeat_interval: self.config.heartbeat_interval,
            abandoned: refused,
        };
        // The welcome goes first on the stream, before any assignment.
        let _ = link.try_send(ToAgent::Welcome(welcome.clone()));
        self.agents.insert(worker, (conn, link));
        self.bus.publish(Event::WorkerJoined {
            worker,
            at: SystemClock.now(),
        });
        let _ = reply.send(Ok(welcome));
        self.round.actions.extend(actions);
    }

    fn started(&mut self, worker: WorkerId, job: JobId, attempt: u32, at: hodei_core::Timestamp) {
        // An agent repeats its start report after a reconnect when it
        // cannot know the first one arrived.
        if self
            .sched
            .lifecycle(job)
            .is_some_and(|l| l.state == JobState::Running { worker, attempt })
        {
            return;
        }
        match self.sched.job_started(worker, job, attempt) {
            Ok(actions) => {
                if let Some(t) = self.submitted_at.remove(&job) {
                    self.metrics.submit_to_start.observe(t.elapsed());
                }
                self.round
                    .patches
                    .push((job, attempt, AttemptPatch::Started { at }));
                self.round.actions.extend(actions);
            }
            Err(e) => tracing::warn!(%job, %worker, error = %e, "start report refused"),
        }
    }
}
