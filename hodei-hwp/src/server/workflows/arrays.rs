//! Job arrays: one submission of N tasks of the same spec, each an
//! ordinary job with its index in its environment, an optional limit on
//! how many run at once (a concurrency key of the array's own), and a
//! summary of where the tasks stand.
//!
//! The array's record is stored first; its tasks are created with the
//! idempotency key `array/<id>/<index>`, so a task is never created twice,
//! and an array whose creation a restart cut short is completed at the
//! next start. One task keeps every array's counts from the engine's
//! events; after a restart (or missed events) they are read again from
//! the tasks themselves.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt as _;
use hodei_core::{
    Clock, ConcurrencyLimit, Event, JobId, JobSpec, JobState, RecvError, SystemClock, Timestamp,
};
use hodei_store::{Store, StoreError, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::proto;
use crate::server::engine::EngineHandle;

/// Records of arrays, by id.
const ARRAY: &str = "array";
/// Most tasks in one array.
pub(crate) const MAX_ARRAY: u32 = 200_000;
/// Tasks created at once while an array is created.
const CREATING: usize = 512;
/// Commands waiting for the arrays task; callers wait when it is full.
const QUEUE: usize = 4096;

/// An array as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    /// The tasks' spec (secret values sealed as a job's are, for the
    /// array's id).
    spec: JobSpec,
    count: u32,
    limit: Option<u32>,
    created_at: Timestamp,
    /// Every task exists.
    created: bool,
}

/// Where a task stands, as the summary counts it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Bucket {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Bucket {
    fn of(state: &JobState, attempt: u32, max_attempts: u32) -> Bucket {
        match state {
            JobState::Pending | JobState::Queued => Bucket::Queued,
            JobState::Assigned { .. } | JobState::Running { .. } => Bucket::Running,
            JobState::Succeeded => Bucket::Succeeded,
            JobState::Cancelled => Bucket::Cancelled,
            // Waiting for a retry: queued again.
            JobState::Failed { .. } | JobState::TimedOut | JobState::Lost
                if attempt < max_attempts =>
            {
                Bucket::Queued
            }
            JobState::Failed { .. } | JobState::TimedOut | JobState::Lost => Bucket::Failed,
        }
    }

    fn is_final(self) -> bool {
        matches!(self, Bucket::Succeeded | Bucket::Failed | Bucket::Cancelled)
    }
}

/// Why an array call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArrayError {
    #[error("array {0} not found")]
    NotFound(JobId),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Create(String),
    #[error("secrets: {0}")]
    Secrets(#[from] crate::server::security::secrets::SecretsError),
    #[error("the server is shutting down")]
    Stopped,
}

/// One array in memory.
struct Tracked {
    stored: Arc<Stored>,
    tasks: HashMap<JobId, Bucket>,
}

impl Tracked {
    fn status(&self, id: JobId) -> proto::ArrayStatus {
        let mut s = proto::ArrayStatus {
            array_id: id.to_string(),
            name: self.stored.spec.name.clone(),
            tenant: self.stored.spec.tenant.as_str().to_string(),
            count: self.stored.count,
            concurrency: self.stored.limit.unwrap_or(0),
            created_at_ms: self.stored.created_at.0,
            ..Default::default()
        };
        for b in self.tasks.values() {
            match b {
                Bucket::Queued => s.queued += 1,
                Bucket::Running => s.running += 1,
                Bucket::Succeeded => s.succeeded += 1,
                Bucket::Failed => s.failed += 1,
                Bucket::Cancelled => s.cancelled += 1,
            }
        }
        // Tasks not created yet are waiting too.
        s.queued += self.stored.count.saturating_sub(self.tasks.len() as u32);
        s.state = if s.queued + s.running > 0 {
            "running"
        } else if s.succeeded == self.stored.count {
            "succeeded"
        } else if s.cancelled > 0 && s.failed == 0 {
            "cancelled"
        } else {
            "failed"
        }
        .to_string();
        s
    }
}

enum Cmd {
    /// Tasks of an array exist (`created` of them new or found).
    Tasks {
        id: JobId,
        stored: Arc<Stored>,
        tasks: Vec<(JobId, Bucket)>,
    },
    Status {
        id: JobId,
        reply: oneshot::Sender<Option<proto::ArrayStatus>>,
    },
    /// Every task of an array not final yet.
    Open {
        id: JobId,
        reply: oneshot::Sender<Option<Vec<JobId>>>,
    },
}

/// The arrays of one server.
#[derive(Debug)]
pub(crate) struct Arrays<S: Store> {
    tx: mpsc::Sender<Cmd>,
    engine: EngineHandle<S>,
}

impl<S: Store> Arrays<S> {
    /// Starts the task keeping the arrays' counts; it first completes
    /// arrays a restart cut short and reads every array's tasks, and ends
    /// when `stopping` turns true.
    pub(crate) fn start(engine: EngineHandle<S>, stopping: watch::Receiver<bool>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let arrays = Arrays {
            tx: tx.clone(),
            engine: engine.clone(),
        };
        let task = Task {
            engine: engine.clone(),
            arrays: HashMap::new(),
            by_job: HashMap::new(),
        };
        let recovering = Arrays {
            tx: tx.clone(),
            engine,
        };
        tokio::spawn(task.run(rx, stopping));
        tokio::spawn(async move {
            if let Err(e) = recovering.recover().await {
                tracing::error!(error = %e, "cannot recover arrays; they resume at the next start");
            }
        });
        arrays
    }

    /// Stores the array, creates its tasks (a few hundred at a time,
    /// in index order), and returns its status once every task exists.
    ///
    /// # Errors
    ///
    /// The store failed, a task could not be created (those created stay,
    /// and the rest are created at the next start), or the server is
    /// stopping.
    ///
    /// # Cancel safety
    ///
    /// Dropped after the record was stored, the rest of the tasks are
    /// created at the next start.
    pub(crate) async fn submit(
        &self,
        mut spec: JobSpec,
        count: u32,
        limit: Option<u32>,
    ) -> Result<proto::ArrayStatus, ArrayError> {
        let id = JobId::new();
        if let Some(keys) = self.engine.secret_keys()
            && !spec.secrets.is_empty()
        {
            let mut j = hodei_core::Job::new(id, spec, Timestamp(0));
            keys.seal(&mut j)?;
            spec = j.spec;
        }
        let stored = Stored {
            spec,
            count,
            limit,
            created_at: SystemClock.now(),
            created: false,
        };
        self.put(id, &stored).await?;
        self.create(id, stored).await?;
        self.status(id).await
    }

    async fn put(&self, id: JobId, s: &Stored) -> Result<(), StoreError> {
        self.engine
            .store()
            .put_record(ARRAY, &id.to_string(), encode("array", s)?)
            .await
            .map(|_| ())
    }

    /// Creates every task of the array (those that exist are found by
    /// their keys), tells the counting task, then marks it created.
    async fn create(&self, id: JobId, mut stored: Stored) -> Result<(), ArrayError> {
        let base = match self.engine.secret_keys() {
            Some(k) if !stored.spec.secrets.is_empty() => {
                k.open(id, &stored.spec).map_err(ArrayError::Secrets)?
            }
            _ => stored.spec.clone(),
        };
        let shared = Arc::new(stored.clone());
        let max_attempts = base.retry.max_attempts;
        let (count, limit) = (stored.count, stored.limit);
        let task = |i: u32| {
            let mut spec = base.clone();
            spec.idempotency_key = Some(format!("array/{id}/{i}"));
            spec.env.insert("HODEI_ARRAY_ID".into(), id.to_string());
            spec.env.insert("HODEI_ARRAY_INDEX".into(), i.to_string());
            spec.env
                .insert("HODEI_ARRAY_SIZE".into(), count.to_string());
            spec.labels.insert("hodei.array".into(), id.to_string());
            spec.labels
                .insert("hodei.array.index".into(), i.to_string());
            if let Some(limit) = limit {
                spec.concurrency = Some(ConcurrencyLimit {
                    key: format!("array/{id}"),
                    limit,
                });
            }
            let engine = self.engine.clone();
            async move { engine.submit(spec).await }
        };
        let mut made = futures::stream::iter(0..count).map(task).buffered(CREATING);
        let mut batch = Vec::with_capacity(CREATING);
        while let Some(r) = made.next().await {
            let (job, _) = r.map_err(|e| ArrayError::Create(e.to_string()))?;
            batch.push((job.id, Bucket::of(&job.state, job.attempt, max_attempts)));
            if batch.len() == CREATING {
                self.tell(id, &shared, std::mem::take(&mut batch)).await?;
            }
        }
        self.tell(id, &shared, batch).await?;
        stored.created = true;
        self.put(id, &stored).await?;
        // From now on an array whose tasks have all ended is forgotten.
        self.tell(id, &Arc::new(stored), Vec::new()).await
    }

    async fn tell(
        &self,
        id: JobId,
        stored: &Arc<Stored>,
        tasks: Vec<(JobId, Bucket)>,
    ) -> Result<(), ArrayError> {
        self.tx
            .send(Cmd::Tasks {
                id,
                stored: Arc::clone(stored),
                tasks,
            })
            .await
            .map_err(|_| ArrayError::Stopped)
    }

    /// Completes arrays whose creation was cut short, and reads the tasks
    /// of every array that has some not final.
    async fn recover(&self) -> Result<(), ArrayError> {
        let store = Arc::clone(self.engine.store());
        for (key, v) in store.records(ARRAY).await? {
            let Ok(id) = key.parse::<JobId>() else {
                continue;
            };
            let stored: Stored = match decode("array", &v) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(array = %id, error = %e, "unreadable array record");
                    continue;
                }
            };
            if !stored.created {
                tracing::info!(array = %id, "completing an array's tasks");
                self.create(id, stored).await?;
                continue;
            }
            let (shared, tasks) = read_tasks(&*store, id, stored).await?;
            if tasks.iter().any(|(_, b)| !b.is_final()) {
                self.tell(id, &shared, tasks).await?;
            }
        }
        Ok(())
    }

    /// An array's status: its counts from memory while it runs, otherwise
    /// read from its tasks.
    ///
    /// # Errors
    ///
    /// `NotFound`, the store failed, or the server is stopping.
    pub(crate) async fn status(&self, id: JobId) -> Result<proto::ArrayStatus, ArrayError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Status { id, reply })
            .await
            .map_err(|_| ArrayError::Stopped)?;
        if let Some(s) = rx.await.map_err(|_| ArrayError::Stopped)? {
            return Ok(s);
        }
        let stored = self.stored(id).await?.ok_or(ArrayError::NotFound(id))?;
        let (shared, tasks) = read_tasks(&**self.engine.store(), id, stored).await?;
        Ok(Tracked {
            stored: shared,
            tasks: tasks.into_iter().collect(),
        }
        .status(id))
    }

    async fn stored(&self, id: JobId) -> Result<Option<Stored>, StoreError> {
        match self.engine.store().record(ARRAY, &id.to_string()).await? {
            Some(v) => Ok(Some(decode("array", &v)?)),
            None => Ok(None),
        }
    }

    /// An array's tenant, if the array exists.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub(crate) async fn tenant(
        &self,
        id: JobId,
    ) -> Result<Option<hodei_core::TenantId>, StoreError> {
        Ok(self.stored(id).await?.map(|s| s.spec.tenant))
    }

    /// Cancels every task of the array not final yet; returns its status.
    ///
    /// # Errors
    ///
    /// `NotFound`, the store failed, or the server is stopping.
    pub(crate) async fn cancel(&self, id: JobId) -> Result<proto::ArrayStatus, ArrayError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Open { id, reply })
            .await
            .map_err(|_| ArrayError::Stopped)?;
        let open = match rx.await.map_err(|_| ArrayError::Stopped)? {
            Some(open) => open,
            None => {
                // Not in memory: every task has ended, or it never was.
                self.stored(id).await?.ok_or(ArrayError::NotFound(id))?;
                Vec::new()
            }
        };
        let engine = &self.engine;
        futures::stream::iter(open)
            .map(|j| async move {
                // One that ended meanwhile is not an error here.
                let _ = engine.cancel(j).await;
            })
            .buffer_unordered(CREATING)
            .collect::<Vec<()>>()
            .await;
        self.status(id).await
    }
}

/// Every task of an array, found by its key (a task not created yet is
/// left out).
async fn read_tasks<S: Store>(
    store: &S,
    id: JobId,
    stored: Stored,
) -> Result<(Arc<Stored>, Vec<(JobId, Bucket)>), StoreError> {
    let max_attempts = stored.spec.retry.max_attempts;
    let tenant = stored.spec.tenant.clone();
    let mut tasks = Vec::with_capacity(stored.count as usize);
    for i in 0..stored.count {
        if let Some(j) = store
            .find_idempotent(&tenant, &format!("array/{id}/{i}"))
            .await?
        {
            tasks.push((j.id, Bucket::of(&j.state, j.attempt, max_attempts)));
        }
    }
    Ok((Arc::new(stored), tasks))
}

enum Next {
    Command(Option<Cmd>),
    Event(Result<Arc<Event>, RecvError>),
    Stop,
}

struct Task<S: Store> {
    engine: EngineHandle<S>,
    arrays: HashMap<JobId, Tracked>,
    by_job: HashMap<JobId, JobId>,
}

impl<S: Store> Task<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, mut stopping: watch::Receiver<bool>) {
        let mut events = self.engine.bus().subscribe();
        loop {
            let next = tokio::select! {
                c = rx.recv() => Next::Command(c),
                e = events.recv() => Next::Event(e),
                _ = stopping.wait_for(|s| *s) => Next::Stop,
            };
            match next {
                Next::Command(Some(c)) => self.command(c),
                Next::Event(Ok(e)) => self.event(&e),
                Next::Event(Err(RecvError::Lagged(n))) => {
                    tracing::warn!(
                        missed = n,
                        "array counts fell behind the events; reading the tasks"
                    );
                    self.resync().await;
                }
                Next::Command(None) | Next::Event(Err(RecvError::Closed)) | Next::Stop => break,
            }
        }
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Tasks { id, stored, tasks } => {
                let a = self.arrays.entry(id).or_insert_with(|| Tracked {
                    stored: Arc::clone(&stored),
                    tasks: HashMap::new(),
                });
                if stored.created {
                    a.stored = stored;
                }
                for (j, b) in tasks {
                    // A count from an event since is newer than a
                    // creation's answer.
                    a.tasks.entry(j).or_insert(b);
                    self.by_job.insert(j, id);
                }
                self.forget_if_done(id);
            }
            Cmd::Status { id, reply } => {
                let _ = reply.send(self.arrays.get(&id).map(|a| a.status(id)));
            }
            Cmd::Open { id, reply } => {
                let _ = reply.send(self.arrays.get(&id).map(|a| {
                    a.tasks
                        .iter()
                        .filter(|(_, b)| !b.is_final())
                        .map(|(j, _)| *j)
                        .collect()
                }));
            }
        }
    }

    fn event(&mut self, e: &Event) {
        let Event::JobChanged {
            job, to, attempt, ..
        } = e
        else {
            return;
        };
        let Some(id) = self.by_job.get(job).copied() else {
            return;
        };
        if let Some(a) = self.arrays.get_mut(&id) {
            let b = Bucket::of(to, *attempt, a.stored.spec.retry.max_attempts);
            a.tasks.insert(*job, b);
            self.forget_if_done(id);
        }
    }

    /// An array all of whose tasks exist and have ended is read from the
    /// store from then on.
    fn forget_if_done(&mut self, id: JobId) {
        let Some(a) = self.arrays.get(&id) else {
            return;
        };
        if a.tasks.len() as u32 == a.stored.count
            && a.stored.created
            && a.tasks.values().all(|b| b.is_final())
            && let Some(a) = self.arrays.remove(&id)
        {
            for j in a.tasks.keys() {
                self.by_job.remove(j);
            }
        }
    }

    /// After missed events: every task of every array in memory is read
    /// again.
    async fn resync(&mut self) {
        let store = Arc::clone(self.engine.store());
        let ids: Vec<JobId> = self.arrays.keys().copied().collect();
        for id in ids {
            let Some(a) = self.arrays.get(&id) else {
                continue;
            };
            let max = a.stored.spec.retry.max_attempts;
            let jobs: Vec<JobId> = a.tasks.keys().copied().collect();
            let mut fresh = Vec::with_capacity(jobs.len());
            for j in jobs {
                if let Ok(Some(job)) = store.get_job(j).await {
                    fresh.push((j, Bucket::of(&job.state, job.attempt, max)));
                }
            }
            if let Some(a) = self.arrays.get_mut(&id) {
                a.tasks.extend(fresh);
            }
            self.forget_if_done(id);
        }
    }
}
