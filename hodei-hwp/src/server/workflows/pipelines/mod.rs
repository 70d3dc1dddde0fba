//! Pipelines in the server: one task drives every running pipeline's
//! [`PipelineRun`] from the engine's events and turns its decisions into
//! ordinary jobs.
//!
//! What is durable, and why nothing runs twice:
//! - the pipeline (its spec) is a keyed record, stored before the call is
//!   answered; a cancel and the final state are a second, small record;
//! - each step's job carries the idempotency key
//!   `pipeline/<id>/<step>` (a compensation's
//!   `pipeline/<id>/compensate/<step>`), so creating it again returns the
//!   job already there;
//! - a step's outputs are stored by the worker service before its result
//!   is applied.
//!
//! So a pipeline's whole state follows from its record and its jobs: after
//! a restart each running pipeline is replayed from them (the steps' ends
//! fed in the order they happened), and only what was decided but not yet
//! created is created.

mod active;
mod outputs;
mod replay;
mod task;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use hodei_core::{Clock, Job, JobId, PipelineGraph, PipelineSpec, SystemClock, Timestamp};
use hodei_sched::{PipelineState, StepOutcome};
use hodei_store::{Store, StoreError, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use self::active::{Role, seal};
pub(crate) use self::outputs::store_outputs;
use self::replay::{marks, replay};
use self::task::Task;
use crate::proto;
use crate::server::engine::EngineHandle;
use crate::server::security::secrets::{SecretKeys, SecretsError};

/// Records of pipelines (their specs), by id.
const PIPELINE: &str = "pipeline";
/// A pipeline's cancel and final state, by id.
const MARKS: &str = "pipeline-marks";
/// A step's published outputs, by `<job>/<attempt>`.
const OUTPUTS: &str = "outputs";

/// Commands waiting for the pipelines task; callers wait when it is full.
const QUEUE: usize = 4096;
/// Pipelines kept in memory after they ended, for status without a replay.
const ENDED_KEPT: usize = 1000;

/// A pipeline as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    spec: PipelineSpec,
    created_at: Timestamp,
}

/// What happened to a pipeline after it was stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Marks {
    cancelled: bool,
    /// The final state's name, once final.
    ended: Option<String>,
}

/// Why a pipeline call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    #[error("pipeline {0} not found")]
    NotFound(JobId),
    #[error("pipeline {0} has already ended ({1})")]
    Ended(JobId, &'static str),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the server is shutting down")]
    Stopped,
    #[error("secrets: {0}")]
    Secrets(#[from] SecretsError),
}

enum Cmd {
    Start {
        id: JobId,
        stored: Arc<Stored>,
        graph: PipelineGraph,
        reply: oneshot::Sender<proto::PipelineStatus>,
    },
    Cancel {
        id: JobId,
        reply: oneshot::Sender<Result<Option<proto::PipelineStatus>, PipelineError>>,
    },
    Status {
        id: JobId,
        summary: bool,
        reply: oneshot::Sender<Option<proto::PipelineStatus>>,
    },
    States {
        reply: oneshot::Sender<HashMap<JobId, PipelineState>>,
    },
    /// A job was created (or an earlier one returned) for `role`, or
    /// could not be.
    Created {
        id: JobId,
        role: Role,
        job: Result<Box<Job>, String>,
    },
    /// A job of a pipeline ended.
    Ended {
        id: JobId,
        role: Role,
        job: JobId,
        outcome: StepOutcome,
        outputs: Option<BTreeMap<String, String>>,
    },
}

/// The pipelines of one server: its calls go to the task that drives
/// them.
#[derive(Debug)]
pub(crate) struct Pipelines<S: Store> {
    tx: mpsc::Sender<Cmd>,
    store: Arc<S>,
    keys: Option<Arc<SecretKeys>>,
}

impl<S: Store> Pipelines<S> {
    /// Starts the task on `engine`: it recovers every pipeline not ended
    /// from the store, then follows the engine's events until `stopping`
    /// turns true.
    pub(crate) fn start(engine: EngineHandle<S>, stopping: watch::Receiver<bool>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = Arc::clone(engine.store());
        let keys = engine.secret_keys().cloned();
        let task = Task {
            keys: keys.clone(),
            engine,
            tx: tx.downgrade(),
            active: HashMap::new(),
            by_job: HashMap::new(),
            ended: VecDeque::new(),
        };
        tokio::spawn(task.run(rx, stopping));
        Pipelines { tx, store, keys }
    }

    /// Stores a validated pipeline and starts it; returns its status.
    ///
    /// # Errors
    ///
    /// The store failed (nothing started), or the server is stopping.
    ///
    /// # Cancel safety
    ///
    /// Dropped after the record was stored, the pipeline still starts
    /// (at the latest when the server next starts).
    pub(crate) async fn submit(
        &self,
        mut spec: PipelineSpec,
        graph: PipelineGraph,
    ) -> Result<proto::PipelineStatus, PipelineError> {
        let id = JobId::new();
        if let Some(keys) = &self.keys {
            seal(keys, id, &mut spec)?;
        }
        let stored = Arc::new(Stored {
            spec,
            created_at: SystemClock.now(),
        });
        self.store
            .put_record(PIPELINE, &id.to_string(), encode("pipeline", &*stored)?)
            .await?;
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Start {
            id,
            stored,
            graph,
            reply,
        })
        .await?;
        rx.await.map_err(|_| PipelineError::Stopped)
    }

    /// A pipeline's tenant, if the pipeline exists.
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

    async fn stored(&self, id: JobId) -> Result<Option<Stored>, StoreError> {
        match self.store.record(PIPELINE, &id.to_string()).await? {
            Some(v) => Ok(Some(decode("pipeline", &v)?)),
            None => Ok(None),
        }
    }

    /// A pipeline's status: from memory while it runs (or ended lately),
    /// otherwise replayed from its record and its jobs.
    ///
    /// # Errors
    ///
    /// `NotFound`, the store failed, or the server is stopping.
    pub(crate) async fn status(
        &self,
        id: JobId,
        summary: bool,
    ) -> Result<proto::PipelineStatus, PipelineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Status { id, summary, reply }).await?;
        if let Some(s) = rx.await.map_err(|_| PipelineError::Stopped)? {
            return Ok(s);
        }
        let stored = self.stored(id).await?.ok_or(PipelineError::NotFound(id))?;
        let marks = marks(&*self.store, id).await?;
        let graph = stored
            .spec
            .validate()
            .map_err(|e| StoreError::storage_message(format!("stored pipeline {id}: {e}")))?;
        let (a, _) = replay(&*self.store, id, Arc::new(stored), graph, &marks).await?;
        Ok(a.status(summary))
    }

    /// Every pipeline whose tenant `visible` accepts, newest first,
    /// without their steps.
    ///
    /// # Errors
    ///
    /// The store failed, or the server is stopping.
    pub(crate) async fn list(
        &self,
        visible: impl Fn(&hodei_core::TenantId) -> bool,
    ) -> Result<Vec<proto::PipelineStatus>, PipelineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::States { reply }).await?;
        let live = rx.await.map_err(|_| PipelineError::Stopped)?;
        let marks: HashMap<String, Marks> = self
            .store
            .records(MARKS)
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k, decode("marks", &v).ok()?)))
            .collect();
        let mut out = Vec::new();
        for (key, v) in self.store.records(PIPELINE).await?.into_iter().rev() {
            let Ok(id) = key.parse::<JobId>() else {
                continue;
            };
            let stored: Stored = decode("pipeline", &v)?;
            if !visible(&stored.spec.tenant) {
                continue;
            }
            let m = marks.get(&key).cloned().unwrap_or_default();
            let state = match (live.get(&id), &m.ended) {
                (Some(s), _) => s.as_str().to_string(),
                (None, Some(e)) => e.clone(),
                (None, None) => PipelineState::Running.as_str().to_string(),
            };
            out.push(proto::PipelineStatus {
                pipeline_id: key,
                name: stored.spec.name.clone(),
                tenant: stored.spec.tenant.as_str().to_string(),
                state,
                continue_on_failure: !stored.spec.fail_fast,
                created_at_ms: stored.created_at.0,
                step_count: stored.spec.steps.len() as u64,
                ..Default::default()
            });
        }
        Ok(out)
    }

    /// Cancels a pipeline: stored first, so a restart does not resume it;
    /// then its running steps are cancelled and the rest skipped.
    ///
    /// # Errors
    ///
    /// `Ended`, the store failed, or the server is stopping.
    pub(crate) async fn cancel(&self, id: JobId) -> Result<proto::PipelineStatus, PipelineError> {
        // Its existence is the caller's to check (`tenant`, which reads the
        // record already): a pipeline's record is never removed.
        let mut m = marks(&*self.store, id).await?;
        if let Some(e) = &m.ended {
            let state = match e.as_str() {
                "succeeded" => "succeeded",
                "cancelled" => "cancelled",
                _ => "failed",
            };
            return Err(PipelineError::Ended(id, state));
        }
        m.cancelled = true;
        self.store
            .put_record(MARKS, &id.to_string(), encode("marks", &m)?)
            .await?;
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Cancel { id, reply }).await?;
        match rx.await.map_err(|_| PipelineError::Stopped)?? {
            Some(s) => Ok(s),
            None => self.status(id, false).await,
        }
    }

    async fn send(&self, c: Cmd) -> Result<(), PipelineError> {
        self.tx.send(c).await.map_err(|_| PipelineError::Stopped)
    }
}
