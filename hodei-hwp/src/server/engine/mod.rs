//! [`Engine`]: the server's core. One task owns the scheduler; API handlers
//! and agent streams talk to it through a bounded queue.
//!
//! The task works in rounds (`core`): it takes every command waiting,
//! lets the scheduler decide, and queues everything the round changed as
//! one store batch (`round`). It does not wait for that batch to be
//! durable before the next round: rounds are pipelined, and each one's
//! effects are carried out, in round order, as soon as its own commit
//! lands: persist, then publish, then deliver.
//!
//! Ordering guarantees:
//! - a new job is stored in the same commit as everything its submission
//!   caused: a job that finds room at once is stored already assigned,
//!   and nothing of it is published or sent before that commit;
//! - every state change the scheduler makes is written to the store, in
//!   order, before anything that depends on it is sent: an assignment
//!   leaves only after its job is stored as Assigned;
//! - events are published on the bus after their change is stored, once,
//!   in the order the changes were made;
//! - a caller's reply (a submit, cancel, drain, or an agent's result) is
//!   sent once what it caused is stored.

mod agent;
mod core;
pub(crate) mod metrics;
mod pending;
mod round;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hodei_core::{
    Bus, Clock, Event, ExitStatus, Job, JobId, JobSpec, JobState, Resources, SystemClock,
    Timestamp, WorkerId,
};
use hodei_sched::{
    AttemptOutcome, ClusterConfig, ClusterState, JobRequest, Scheduler, SchedulerConfig,
};
use hodei_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

pub use self::agent::{AgentLink, ToAgent, Welcome};
use self::core::Core;
use crate::server::engine::metrics::{Metrics, Snapshot};

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Seals jobs' secret values before they are stored and opens them
    /// for the AssignJob only. Without keys, values are stored as given.
    pub secret_keys: Option<Arc<crate::server::security::secrets::SecretKeys>>,
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
            secret_keys: None,
        }
    }
}

/// Why an engine request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A secret could not be sealed.
    #[error(transparent)]
    Secrets(#[from] crate::server::security::secrets::SecretsError),
}

/// Where a submission's answer goes: the job as stored, and whether this
/// submission created it.
type SubmitReply = oneshot::Sender<Result<(Job, bool), EngineError>>;

/// Where a command's answer goes.
type Reply = oneshot::Sender<Result<(), EngineError>>;

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
    Submit {
        job: Box<Job>,
        /// Dependencies found final when the submission was checked, and
        /// whether each succeeded.
        done: Vec<(JobId, bool)>,
        begun: std::time::Instant,
        /// Its audit record, stored in the same commit as the job.
        audit: Option<hodei_store::AuditEntry>,
        reply: SubmitReply,
    },
    /// A record for the audit chain, stored with the next round.
    Audit {
        entry: hodei_store::AuditEntry,
    },
    Snapshot {
        reply: oneshot::Sender<Result<Snapshot, EngineError>>,
    },
    Cancel {
        job: JobId,
        reply: Reply,
    },
    Connect {
        reg: Registration,
        link: Box<dyn AgentLink>,
        conn: u64,
        reply: oneshot::Sender<Result<Welcome, EngineError>>,
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
        reply: Reply,
    },
    Drain {
        worker: WorkerId,
        reply: Reply,
    },
    CloseAgents {
        reply: Reply,
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
    secret_keys: Option<Arc<crate::server::security::secrets::SecretKeys>>,
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
            secret_keys: self.secret_keys.clone(),
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
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read for recovery.
    pub async fn start<S: Store>(
        store: Arc<S>,
        config: EngineConfig,
    ) -> Result<(EngineHandle<S>, tokio::task::JoinHandle<()>), EngineError> {
        let cluster = Arc::new(ClusterState::new({
            let mut c = ClusterConfig::default();
            c.heartbeat_timeout = config.heartbeat_timeout;
            c
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
        for (tenant, weight) in &config.tenant_weights {
            metrics.set_weight(tenant.clone(), (*weight).max(1));
        }
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
            secret_keys: config.secret_keys.clone(),
        };
        let mut core = Core::new(sched, store, bus, config, metrics);
        let task = tokio::spawn(async move {
            core.recovered(actions);
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
    ///
    /// # Errors
    ///
    /// [`EngineError::Stopped`] when the engine has stopped.
    pub async fn snapshot(&self) -> Result<Snapshot, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Snapshot { reply }).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// The keys that seal secret values at rest, if the server has them.
    pub(crate) fn secret_keys(&self) -> Option<&Arc<crate::server::security::secrets::SecretKeys>> {
        self.secret_keys.as_ref()
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

    /// Submits a validated spec as a new job (or returns the job an
    /// earlier submission with the same idempotency key made). The engine
    /// places it at once if it can, and stores it, placed or queued, in
    /// one commit; this returns once that commit is durable, with the job
    /// as stored and whether it is new.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnknownDependency`] for a dependency that does not
    /// exist or belongs to another tenant (the two are not told apart, so
    /// no tenant learns which ids another has); store errors (nothing of
    /// the job is kept); `Stopped`.
    ///
    /// # Cancel safety
    ///
    /// Dropped after the engine took the job, the submission still
    /// completes; only its answer is lost. Submit again with an
    /// idempotency key to learn it.
    pub async fn submit(&self, spec: JobSpec) -> Result<(Job, bool), EngineError> {
        self.submit_audited(spec, None).await
    }

    /// [`submit`](Self::submit), with the call's audit record: stored in
    /// the same commit as the job (its target and outcome filled in here),
    /// or with the next round when the submission is refused or returns
    /// an earlier job.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_audited(
        &self,
        spec: JobSpec,
        audit: Option<hodei_store::AuditEntry>,
    ) -> Result<(Job, bool), EngineError> {
        let begun = std::time::Instant::now();
        // Read once, here: the engine task takes the outcome with the job.
        let mut done = Vec::new();
        for dep in &spec.dependencies {
            match self.store.get_job(*dep).await? {
                Some(d) if d.spec.tenant == spec.tenant => {
                    if d.is_terminal() {
                        done.push((d.id, d.state == JobState::Succeeded));
                    }
                }
                _ => {
                    let e = EngineError::UnknownDependency(*dep);
                    if let Some(mut a) = audit {
                        a.outcome = format!("refused: {e}");
                        self.audit(a).await;
                    }
                    return Err(e);
                }
            }
        }
        let mut job = Job::new(JobId::new(), spec, SystemClock.now());
        // Sealed before it leaves this call: the engine, the store and
        // every reply only ever hold the sealed value.
        if let Some(keys) = &self.secret_keys {
            keys.seal(&mut job)?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Submit {
            job: Box::new(job),
            done,
            begun,
            audit,
            reply,
        })
        .await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Appends `entry` to the audit chain with the next round (durable
    /// with it). Waits while the engine's queue is full; an entry sent
    /// while the engine stops is dropped and logged.
    pub async fn audit(&self, entry: hodei_store::AuditEntry) {
        if self.send(Command::Audit { entry }).await.is_err() {
            tracing::warn!("audit record dropped: the engine has stopped");
        }
    }

    /// Cancels a job the scheduler still tracks.
    ///
    /// # Errors
    ///
    /// [`EngineError::Sched`] for a job the scheduler does not track (unknown
    /// or already final); [`EngineError::Stopped`].
    pub async fn cancel(&self, job: JobId) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Cancel { job, reply }).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Stops placing new jobs on a worker.
    ///
    /// # Errors
    ///
    /// [`EngineError::Sched`] for an unknown worker; [`EngineError::Stopped`].
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
    /// Messages for it go to `link`, the [`ToAgent::Welcome`] first.
    /// Returns the connection's id and the welcome.
    ///
    /// # Errors
    ///
    /// [`EngineError::Sched`] when the registration is refused (its capacity,
    /// say); [`EngineError::Stopped`].
    pub async fn connect(
        &self,
        reg: Registration,
        link: Box<dyn AgentLink>,
    ) -> Result<(u64, Welcome), EngineError> {
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
            link,
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
    ///
    /// # Errors
    ///
    /// [`EngineError::Stopped`] only: a report the state machine refuses (a
    /// stale attempt) is logged and dropped.
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
    ///
    /// # Errors
    ///
    /// [`EngineError::Stopped`] only: a report the state machine refuses counts
    /// as applied.
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
    ///
    /// # Errors
    ///
    /// [`EngineError::Stopped`] if the engine stopped before the report was
    /// stored.
    pub async fn wait(self) -> Result<(), EngineError> {
        self.0.await.map_err(|_| EngineError::Stopped)?
    }
}
