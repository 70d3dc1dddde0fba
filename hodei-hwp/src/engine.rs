//! [`Engine`]: the server's core. One task owns the scheduler; API handlers
//! and agent streams talk to it through a bounded queue.
//!
//! Ordering guarantees:
//! - a submission is durable before the engine learns of it;
//! - every state change the scheduler makes is written to the store, in
//!   order, before anything that depends on it is sent: an `AssignJob`
//!   leaves only after its job is stored as Assigned;
//! - events are published on the bus after their change is stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hodei_core::{
    Bus, Clock, Event, ExitStatus, Job, JobId, JobSpec, JobState, Resources, SystemClock,
    Timestamp, Transition, WorkerId,
};
use hodei_sched::{
    Action, AttemptOutcome, ClusterConfig, ClusterState, JobRequest, Scheduler, SchedulerConfig,
    WorkerSpec,
};
use hodei_store::{AttemptRecord, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::convert::spec_to_wire;
use crate::metrics::{Metrics, Snapshot};
use crate::proto;

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
    /// How often agents are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is lost and its jobs retried.
    pub heartbeat_timeout: Duration,
    /// How long a cancelled job gets between SIGTERM and SIGKILL.
    pub cancel_grace: Duration,
    /// Commands waiting for the engine before callers are made to wait.
    pub queue_depth: usize,
    /// Messages waiting to go to one agent; an agent that falls this far
    /// behind is disconnected and its jobs follow their retry policies.
    pub agent_queue_depth: usize,
    /// Tenants' shares of dispatches under contention (weighted fair
    /// queuing); a tenant not listed weighs 1.
    pub tenant_weights: Vec<(hodei_core::TenantId, u32)>,
    /// On shutdown, how long the server keeps its listeners open after it
    /// reports itself not ready (gRPC health NOT_SERVING, `/readyz` 503)
    /// and before it stops accepting: load balancers and clients see it
    /// leave while in-flight work drains.
    pub shutdown_delay: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            scheduler: SchedulerConfig::default(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            cancel_grace: Duration::from_secs(10),
            queue_depth: 4096,
            agent_queue_depth: 8192,
            tenant_weights: Vec::new(),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// Why an engine request failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scheduler refused.
    #[error(transparent)]
    Sched(#[from] hodei_sched::SchedError),
    /// A dependency names no known job.
    #[error("dependency {0} is not a known job")]
    UnknownDependency(JobId),
    /// The engine has stopped.
    #[error("the server is shutting down")]
    Stopped,
}

/// The sending half of an agent's stream; an `Err` ends the stream with
/// that status.
pub type AgentSender = mpsc::Sender<Result<proto::ServerMessage, tonic::Status>>;

/// A reply owed to a caller once the actions of its command are stored.
type Owed = Option<(
    oneshot::Sender<Result<(), EngineError>>,
    Result<(), EngineError>,
)>;

/// An agent's registration, checked.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The worker id (kept across reconnects).
    pub worker: WorkerId,
    /// The name the agent gave (its host name by default).
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its capacity.
    pub capacity: Resources,
    /// Jobs it still runs or holds results for: (job, attempt).
    pub held: Vec<(JobId, u32)>,
}

enum Command {
    Admit(Box<Job>, std::time::Instant),
    Snapshot {
        reply: oneshot::Sender<Result<Snapshot, EngineError>>,
    },
    Cancel {
        job: JobId,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Connect {
        reg: Registration,
        tx: AgentSender,
        conn: u64,
        reply: oneshot::Sender<Result<proto::Welcome, EngineError>>,
    },
    Disconnected {
        worker: WorkerId,
        conn: u64,
    },
    Started {
        worker: WorkerId,
        job: JobId,
        attempt: u32,
        at: Timestamp,
    },
    Finished {
        worker: WorkerId,
        job: JobId,
        attempt: u32,
        outcome: AttemptOutcome,
        exit: ExitStatus,
        peak_memory_mb: u64,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Drain {
        worker: WorkerId,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    CloseAgents {
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// A cheap handle to a running engine.
pub struct EngineHandle<S> {
    tx: mpsc::Sender<Command>,
    store: Arc<S>,
    bus: Bus<Event>,
    cluster: Arc<ClusterState>,
    conns: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
    /// Names workers registered with.
    names: Arc<std::sync::RwLock<HashMap<WorkerId, String>>>,
}

impl<S> Clone for EngineHandle<S> {
    fn clone(&self) -> Self {
        EngineHandle {
            tx: self.tx.clone(),
            store: Arc::clone(&self.store),
            bus: self.bus.clone(),
            cluster: Arc::clone(&self.cluster),
            conns: Arc::clone(&self.conns),
            metrics: Arc::clone(&self.metrics),
            names: Arc::clone(&self.names),
        }
    }
}

impl<S> std::fmt::Debug for EngineHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").finish_non_exhaustive()
    }
}

/// The server's core: recovers from the store, then runs the scheduler on
/// commands and deadlines. See the module docs for its ordering rules.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Recovers unfinished jobs from `store` and starts the engine task.
    /// The task ends when every handle is dropped.
    pub async fn start<S: Store>(
        store: Arc<S>,
        config: EngineConfig,
    ) -> Result<(EngineHandle<S>, tokio::task::JoinHandle<()>), EngineError> {
        let cluster = Arc::new(ClusterState::new(ClusterConfig {
            heartbeat_timeout: config.heartbeat_timeout,
        }));
        let mut sched = Scheduler::new(config.scheduler.clone(), Arc::clone(&cluster), SystemClock);
        for (tenant, weight) in &config.tenant_weights {
            sched.set_weight(tenant.clone(), (*weight).max(1));
        }
        let bus = Bus::new(4096);
        let recovered = store.recover().await?;
        let live: std::collections::HashSet<JobId> = recovered.iter().map(|j| j.id).collect();
        // Dependencies that finished before the restart.
        for job in &recovered {
            for dep in &job.spec.dependencies {
                if !live.contains(dep) {
                    let done = store.get_job(*dep).await?;
                    sched.record_finished(
                        *dep,
                        done.is_some_and(|d| d.state == JobState::Succeeded),
                    );
                }
            }
        }
        let metrics = Arc::new(Metrics::default());
        let mut actions = Vec::new();
        for job in recovered {
            metrics.job_entered(&job.state);
            let life = job.lifecycle();
            let req = JobRequest::from_spec(job.id, &job.spec);
            match sched.adopt(req, life) {
                Ok(a) => actions.extend(a),
                Err(e) => tracing::error!(job = %job.id, error = %e, "could not recover job"),
            }
        }
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let handle = EngineHandle {
            tx,
            store: Arc::clone(&store),
            bus: bus.clone(),
            cluster,
            conns: Arc::default(),
            metrics: Arc::clone(&metrics),
            names: Arc::default(),
        };
        let mut core = Core {
            sched,
            store,
            // An idle subscriber that never reads: it keeps the bus storing
            // events even when nobody watches, so watchers can resume from
            // a recent point. It never slows the publisher.
            _journal: bus.subscribe(),
            bus,
            agents: HashMap::new(),
            config,
            metrics,
            submitted_at: HashMap::new(),
            attempt_updates: Vec::new(),
        };
        let task = tokio::spawn(async move {
            core.apply(actions).await;
            core.run(rx).await;
        });
        Ok((handle, task))
    }
}

impl<S: Store> EngineHandle<S> {
    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the scheduler holds now: queue depths and counts.
    pub async fn snapshot(&self) -> Result<Snapshot, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Snapshot { reply }).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The event bus (state changes, logs, workers).
    pub fn bus(&self) -> &Bus<Event> {
        &self.bus
    }

    /// The live cluster state.
    pub fn cluster(&self) -> &Arc<ClusterState> {
        &self.cluster
    }

    async fn send(&self, c: Command) -> Result<(), EngineError> {
        self.tx.send(c).await.map_err(|_| EngineError::Stopped)
    }

    /// Stores a validated spec as a new job (or returns the job an earlier
    /// submission with the same idempotency key made) and, once it is
    /// durable, hands it to the scheduler. Returns the job and whether it
    /// is new.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnknownDependency`] for a dependency that does not
    /// exist or belongs to another tenant (the two are not told apart, so
    /// no tenant learns which ids another has); store errors; `Stopped`.
    pub async fn submit(&self, spec: JobSpec) -> Result<(Job, bool), EngineError> {
        for dep in &spec.dependencies {
            match self.store.get_job(*dep).await? {
                Some(d) if d.spec.tenant == spec.tenant => {}
                _ => return Err(EngineError::UnknownDependency(*dep)),
            }
        }
        let begun = std::time::Instant::now();
        let job = Job::new(JobId::new(), spec, SystemClock.now());
        let inserted = self.store.insert_job(job).await?;
        let created = inserted.is_new();
        let job = inserted.job().clone();
        if created {
            self.bus.publish(Event::JobSubmitted {
                job: job.id,
                tenant: job.spec.tenant.clone(),
                at: job.created_at,
            });
            self.metrics
                .submitted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.send(Command::Admit(Box::new(job.clone()), begun))
                .await?;
        }
        Ok((job, created))
    }

    /// Cancels a job the scheduler still tracks.
    pub async fn cancel(&self, job: JobId) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Cancel { job, reply }).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Stops placing new jobs on a worker.
    pub async fn drain(&self, worker: WorkerId) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Drain { worker, reply }).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Ends every agent's stream with UNAVAILABLE (the server is stopping;
    /// agents reconnect to the next one and re-attach their jobs).
    pub async fn close_agents(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::CloseAgents { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// An agent (re)connected: registers it and re-attaches its jobs.
    /// Returns the connection's id and the Welcome to send.
    pub async fn connect(
        &self,
        reg: Registration,
        tx: AgentSender,
    ) -> Result<(u64, proto::Welcome), EngineError> {
        let conn = self
            .conns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(reg.worker, reg.name.clone());
        let (reply, rx) = oneshot::channel();
        self.send(Command::Connect {
            reg,
            tx,
            conn,
            reply,
        })
        .await?;
        let welcome = rx.await.map_err(|_| EngineError::Stopped)??;
        Ok((conn, welcome))
    }

    /// The name a worker registered with (empty if it gave none).
    pub fn worker_name(&self, worker: WorkerId) -> String {
        self.names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&worker)
            .cloned()
            .unwrap_or_default()
    }

    /// An agent's stream ended. Its worker takes no new jobs; if it does
    /// not reconnect within the heartbeat timeout, it is lost.
    pub async fn disconnected(&self, worker: WorkerId, conn: u64) {
        let _ = self.send(Command::Disconnected { worker, conn }).await;
    }

    /// The agent started an attempt.
    pub async fn started(
        &self,
        worker: WorkerId,
        job: JobId,
        attempt: u32,
    ) -> Result<(), EngineError> {
        let at = SystemClock.now();
        self.send(Command::Started {
            worker,
            job,
            attempt,
            at,
        })
        .await
    }

    /// The agent reports the end of an attempt.
    pub async fn finished(
        &self,
        worker: WorkerId,
        job: JobId,
        attempt: u32,
        exit: ExitStatus,
        timed_out: bool,
        peak_memory_mb: u64,
    ) -> Result<Applied, EngineError> {
        let (reply, rx) = oneshot::channel();
        let outcome = if timed_out {
            AttemptOutcome::TimedOut
        } else if exit.success() {
            AttemptOutcome::Succeeded
        } else {
            AttemptOutcome::Failed(exit)
        };
        self.send(Command::Finished {
            worker,
            job,
            attempt,
            outcome,
            exit,
            peak_memory_mb,
            reply,
        })
        .await?;
        Ok(Applied(rx))
    }
}

/// A report the engine has taken; [`Applied::wait`] returns once it is
/// applied and what it changed is stored.
#[derive(Debug)]
pub struct Applied(oneshot::Receiver<Result<(), EngineError>>);

impl Applied {
    /// Waits until the report is applied and stored. A report the state
    /// machine refused (stale attempt, job already ended) counts as applied:
    /// there is nothing more to do with it.
    pub async fn wait(self) -> Result<(), EngineError> {
        self.0.await.map_err(|_| EngineError::Stopped)?
    }
}

struct Core<S> {
    sched: Scheduler<SystemClock>,
    store: Arc<S>,
    _journal: hodei_core::Subscriber<Event>,
    bus: Bus<Event>,
    agents: HashMap<WorkerId, (u64, AgentSender)>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    /// When each job not yet started was submitted.
    submitted_at: HashMap<JobId, std::time::Instant>,
    /// Attempt-record changes of the current round.
    attempt_updates: Vec<(JobId, u32, AttemptUpdate)>,
}

/// Applies the attempt-record updates of this round: one read and one
/// write per attempt, all attempts at once.
async fn flush_attempt_updates<S: Store>(store: Arc<S>, updates: Vec<(JobId, u32, AttemptUpdate)>) {
    if updates.is_empty() {
        return;
    }
    let mut by_attempt: HashMap<(JobId, u32), Vec<AttemptUpdate>> = HashMap::new();
    for (job, attempt, u) in updates {
        by_attempt.entry((job, attempt)).or_default().push(u);
    }
    let store = &store;
    let writes = by_attempt
        .into_iter()
        .map(|((job, attempt), updates)| async move {
            let Ok(records) = store.attempts(job).await else {
                return;
            };
            if let Some(mut r) = records.into_iter().find(|r| r.attempt == attempt) {
                for u in updates {
                    match u {
                        AttemptUpdate::Started(at) => r.started_at = Some(at),
                        AttemptUpdate::Finished {
                            at,
                            exit,
                            peak_memory_mb,
                        } => {
                            r.finished_at = Some(at);
                            r.exit = Some(exit);
                            r.peak_memory_mb = Some(peak_memory_mb);
                        }
                    }
                }
                if let Err(e) = store.record_attempt(r).await {
                    tracing::error!(%job, error = %e, "could not record attempt");
                }
            }
        });
    futures::future::join_all(writes).await;
}

/// A change to an attempt's record, applied at the end of a round.
enum AttemptUpdate {
    Started(Timestamp),
    Finished {
        at: Timestamp,
        exit: ExitStatus,
        peak_memory_mb: u64,
    },
}

/// One stored state change: the state and attempt it expects, and the
/// transition.
type Step = (JobState, u32, Transition);

/// Commands handled in one round at most.
const ROUND: usize = 1024;

impl<S: Store> Core<S> {
    async fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let wait = self
                .sched
                .next_deadline()
                .map(|d| d.saturating_since(SystemClock.now()));
            let mut actions = Vec::new();
            let mut owed = Vec::new();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(c) => {
                        let (a, o) = self.handle(c).await;
                        actions.extend(a);
                        owed.extend(o);
                        // Whatever else is already waiting joins this round:
                        // its store writes go out together and share commits.
                        for _ in 1..ROUND {
                            let Ok(c) = rx.try_recv() else { break };
                            let (a, o) = self.handle(c).await;
                            actions.extend(a);
                            owed.extend(o);
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => {
                    actions = self.sched.tick();
                }
            };
            let updates = std::mem::take(&mut self.attempt_updates);
            let store = Arc::clone(&self.store);
            futures::future::join(self.apply(actions), flush_attempt_updates(store, updates)).await;
            // Answered only now, so each caller reads what it caused.
            for (reply, result) in owed {
                let _ = reply.send(result);
            }
        }
    }

    async fn handle(&mut self, c: Command) -> (Vec<Action>, Owed) {
        let actions = match c {
            Command::Snapshot { reply } => {
                let snap = Snapshot {
                    queue_depths: self.sched.queue_depths(),
                    stats: self.sched.stats(),
                };
                let _ = reply.send(Ok(snap));
                return (Vec::new(), None);
            }
            Command::Admit(job, begun) => {
                self.metrics.job_entered(&job.state);
                self.submitted_at.insert(job.id, begun);
                for dep in &job.spec.dependencies {
                    if self.sched.lifecycle(*dep).is_none()
                        && let Ok(Some(d)) = self.store.get_job(*dep).await
                    {
                        self.sched
                            .record_finished(*dep, d.state == JobState::Succeeded);
                    }
                }
                let req = JobRequest::from_spec(job.id, &job.spec);
                self.sched.adopt(req, job.lifecycle()).unwrap_or_else(|e| {
                    tracing::error!(job = %job.id, error = %e, "could not schedule job");
                    Vec::new()
                })
            }
            Command::Cancel { job, reply } => {
                return match self.sched.cancel(job) {
                    Ok(a) => (a, Some((reply, Ok(())))),
                    Err(e) => (Vec::new(), Some((reply, Err(e.into())))),
                };
            }
            Command::CloseAgents { reply } => {
                for (_, (_, tx)) in self.agents.drain() {
                    let _ = tx.try_send(Err(tonic::Status::unavailable(
                        "the server is shutting down; reconnect and re-attach",
                    )));
                }
                return (Vec::new(), Some((reply, Ok(()))));
            }
            Command::Drain { worker, reply } => {
                return match self.sched.worker_draining(worker) {
                    Ok(a) => {
                        if let Some((_, tx)) = self.agents.get(&worker) {
                            let drain = msg(proto::server_message::Msg::Drain(proto::Drain {}));
                            let _ = tx.try_send(drain);
                        }
                        (a, Some((reply, Ok(()))))
                    }
                    Err(e) => (Vec::new(), Some((reply, Err(e.into())))),
                };
            }
            Command::Connect {
                reg,
                tx,
                conn,
                reply,
            } => {
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
                        return (Vec::new(), None);
                    }
                };
                let welcome = proto::Welcome {
                    worker_id: worker.to_string(),
                    heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
                    abandoned_jobs: refused.iter().map(JobId::to_string).collect(),
                };
                // Welcome goes first on the stream, before any assignment.
                let _ = tx.try_send(msg(proto::server_message::Msg::Welcome(welcome.clone())));
                self.agents.insert(worker, (conn, tx));
                self.bus.publish(Event::WorkerJoined {
                    worker,
                    at: SystemClock.now(),
                });
                let _ = reply.send(Ok(welcome));
                actions
            }
            Command::Disconnected { worker, conn } => {
                if self.agents.get(&worker).is_some_and(|(c, _)| *c == conn) {
                    self.agents.remove(&worker);
                    // No new work until it reconnects; its jobs keep their
                    // places until the heartbeat timeout says otherwise.
                    let _ = self.sched.cluster().drain(worker);
                }
                Vec::new()
            }
            Command::Started {
                worker,
                job,
                attempt,
                at,
            } => {
                // An agent repeats its start report after a reconnect when
                // it cannot know the first one arrived.
                if self
                    .sched
                    .lifecycle(job)
                    .is_some_and(|l| l.state == JobState::Running { worker, attempt })
                {
                    return (Vec::new(), None);
                }
                let r = self.sched.job_started(worker, job, attempt);
                if r.is_ok() {
                    if let Some(t) = self.submitted_at.remove(&job) {
                        self.metrics.submit_to_start.observe(t.elapsed());
                    }
                    self.attempt_updates
                        .push((job, attempt, AttemptUpdate::Started(at)));
                }
                r.unwrap_or_else(|e| {
                    tracing::warn!(%job, %worker, error = %e, "start report refused");
                    Vec::new()
                })
            }
            Command::Finished {
                worker,
                job,
                attempt,
                outcome,
                exit,
                peak_memory_mb,
                reply,
            } => {
                let r = self.sched.job_finished(worker, job, attempt, outcome);
                if r.is_ok() {
                    let now = SystemClock.now();
                    self.attempt_updates.push((
                        job,
                        attempt,
                        AttemptUpdate::Finished {
                            at: now,
                            exit,
                            peak_memory_mb,
                        },
                    ));
                }
                let actions = r.unwrap_or_else(|e| {
                    tracing::warn!(%job, %worker, error = %e, "finish report refused");
                    Vec::new()
                });
                return (actions, Some((reply, Ok(()))));
            }
        };
        (actions, None)
    }

    /// Stores every state change in order, then publishes and sends.
    async fn apply(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let now = SystemClock.now();
        // One chain per job, so a job's changes are stored in order (a
        // start and a finish can arrive in the same round); the chains run
        // at once, so independent jobs share commits.
        let mut chains: Vec<(JobId, Vec<Step>)> = Vec::new();
        let mut chain_of: HashMap<JobId, usize> = HashMap::new();
        for a in &actions {
            if let Action::Changed {
                job,
                from,
                attempt,
                cause,
                ..
            } = a
            {
                let before = if *cause == Transition::Retry {
                    attempt - 1
                } else {
                    *attempt
                };
                let i = *chain_of.entry(*job).or_insert_with(|| {
                    chains.push((*job, Vec::new()));
                    chains.len() - 1
                });
                chains[i].1.push((*from, before, *cause));
            }
        }
        let store = &self.store;
        let writes = chains.into_iter().map(|(job, steps)| async move {
            let mut out = Vec::with_capacity(steps.len());
            for (from, before, cause) in steps {
                out.push(store.transition(job, from, before, cause, now).await);
            }
            out
        });
        // The attempts assigned are recorded alongside, in the same commit.
        // Should a transition be refused, its record names an assignment
        // that was never sent; the next assignment of that attempt
        // overwrites it.
        let records = actions.iter().filter_map(|a| match a {
            Action::Assign {
                job,
                worker,
                attempt,
            } => Some(store.record_attempt(AttemptRecord {
                job: *job,
                attempt: *attempt,
                worker: *worker,
                assigned_at: now,
                started_at: None,
                finished_at: None,
                exit: None,
                peak_memory_mb: None,
            })),
            _ => None,
        });
        let (results, recorded) = futures::future::join(
            futures::future::join_all(writes),
            futures::future::join_all(records),
        )
        .await;
        for r in recorded {
            if let Err(e) = r {
                tracing::error!(error = %e, "could not record attempt");
            }
        }
        // The latest stored version of each job changed in this batch.
        let mut stored: HashMap<JobId, Job> = HashMap::with_capacity(results.len());
        for r in results.into_iter().flatten() {
            match r {
                Ok(j) => {
                    stored.insert(j.id, j);
                }
                Err(e) => tracing::error!(error = %e, "state change not stored"),
            }
        }
        for a in &actions {
            if let Action::Changed {
                job,
                from,
                to,
                attempt,
                ..
            } = a
                && let Some(j) = stored.get(job)
            {
                self.metrics.job_moved(from, to);
                if j.is_terminal() {
                    self.submitted_at.remove(job);
                }
                self.bus.publish(Event::JobChanged {
                    job: *job,
                    tenant: j.spec.tenant.clone(),
                    from: *from,
                    to: *to,
                    attempt: *attempt,
                    at: now,
                });
            }
        }
        let mut lost = Vec::new();
        for a in actions {
            match a {
                Action::Assign {
                    job,
                    worker,
                    attempt,
                } => {
                    let Some(j) = stored.get(&job) else {
                        continue;
                    };
                    let m = msg(proto::server_message::Msg::AssignJob(proto::AssignJob {
                        job_id: job.to_string(),
                        attempt,
                        spec: Some(spec_to_wire(&j.spec, true)),
                    }));
                    if !self.deliver(worker, m) {
                        lost.push(worker);
                    }
                }
                Action::Stop {
                    job,
                    worker,
                    attempt,
                } => {
                    let m = msg(proto::server_message::Msg::CancelJob(proto::CancelJob {
                        job_id: job.to_string(),
                        attempt,
                        grace_ms: self.config.cancel_grace.as_millis() as u64,
                    }));
                    // An agent that cannot be told will be lost by its
                    // heartbeats; the attempt already ended here.
                    let _ = self.deliver(worker, m);
                }
                Action::Changed { .. } => {}
            }
        }
        for worker in lost {
            tracing::warn!(%worker, "agent unreachable or too far behind; its jobs will be retried");
            self.agents.remove(&worker);
            if let Ok(more) = self.sched.worker_lost(worker) {
                Box::pin(self.apply(more)).await;
            }
        }
    }

    fn deliver(&self, worker: WorkerId, m: Result<proto::ServerMessage, tonic::Status>) -> bool {
        match self.agents.get(&worker) {
            Some((_, tx)) => tx.try_send(m).is_ok(),
            None => false,
        }
    }
}

fn msg(m: proto::server_message::Msg) -> Result<proto::ServerMessage, tonic::Status> {
    Ok(proto::ServerMessage { msg: Some(m) })
}
