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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use hodei_core::{
    Clock, Event, Job, JobId, JobSpec, JobState, PipelineGraph, PipelineSpec, RecvError,
    SystemClock, Timestamp, output_variable,
};
use hodei_sched::{Decision, PipelineRun, PipelineState, StepOutcome, StepState};
use hodei_store::{Store, StoreError, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

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

/// Stores what a step's job published, for the steps after it.
///
/// # Errors
///
/// The store failed.
pub(crate) async fn store_outputs<S: Store>(
    store: &S,
    job: JobId,
    attempt: u32,
    outputs: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    store
        .put_record(
            OUTPUTS,
            &format!("{job}/{attempt}"),
            encode("outputs", outputs)?,
        )
        .await
        .map(|_| ())
}

async fn load_outputs<S: Store>(store: &S, job: JobId, attempt: u32) -> BTreeMap<String, String> {
    match store.record(OUTPUTS, &format!("{job}/{attempt}")).await {
        Ok(Some(v)) => decode("outputs", &v).unwrap_or_default(),
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            tracing::warn!(%job, error = %e, "cannot read a step's outputs");
            BTreeMap::new()
        }
    }
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

/// The id a step's (or a compensation's) secret values are sealed for in
/// the pipeline's record: one per job of the pipeline, so a sealed value
/// opens only for the job it was written for.
fn sealing_id(pipeline: JobId, slot: usize) -> JobId {
    JobId::from_u128(pipeline.as_u128().wrapping_add(slot as u128 + 1))
}

/// Clears every secret value (names stay); true if there was one.
fn erase_secrets(spec: &mut PipelineSpec) -> bool {
    let mut any = false;
    let jobs = spec
        .steps
        .iter_mut()
        .map(|s| &mut s.job)
        .chain(spec.compensations.iter_mut().map(|c| &mut c.job));
    for job in jobs {
        for s in &mut job.secrets {
            if !s.value.is_empty() {
                s.value.clear();
                any = true;
            }
        }
    }
    any
}

/// Seals every secret value of the pipeline's jobs for its record.
fn seal(keys: &SecretKeys, id: JobId, spec: &mut PipelineSpec) -> Result<(), SecretsError> {
    let jobs = spec
        .steps
        .iter_mut()
        .map(|s| &mut s.job)
        .chain(spec.compensations.iter_mut().map(|c| &mut c.job));
    for (slot, job) in jobs.enumerate() {
        if job.secrets.is_empty() {
            continue;
        }
        let mut j = Job::new(sealing_id(id, slot), std::mem::take(job), Timestamp(0));
        keys.seal(&mut j)?;
        *job = j.spec;
    }
    Ok(())
}

/// Which job of a pipeline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Role {
    Step(usize),
    Compensation(usize),
}

fn outcome_of(state: &JobState) -> StepOutcome {
    match state {
        JobState::Succeeded => StepOutcome::Succeeded,
        JobState::Cancelled => StepOutcome::Cancelled,
        _ => StepOutcome::Failed,
    }
}

/// One pipeline in memory.
struct Active {
    id: JobId,
    stored: Arc<Stored>,
    graph: PipelineGraph,
    run: PipelineRun,
    /// Each step's job, once it exists.
    jobs: Vec<Option<JobId>>,
    /// Each step's compensation job, once it exists.
    comp_jobs: Vec<Option<JobId>>,
    /// What each step that succeeded published.
    outputs: Vec<Option<Arc<BTreeMap<String, String>>>>,
    /// Why a job could not be created.
    errors: HashMap<Role, String>,
    /// Cancelled while its job was being created: cancelled once it is.
    cancel_when_created: HashSet<Role>,
}

impl Active {
    fn new(id: JobId, stored: Arc<Stored>, graph: PipelineGraph) -> Active {
        let spec = &stored.spec;
        let conditions: Vec<_> = spec.steps.iter().map(|s| s.condition).collect();
        let run = PipelineRun::new(&graph, &conditions, spec.fail_fast);
        let n = spec.steps.len();
        Active {
            id,
            run,
            graph,
            jobs: vec![None; n],
            comp_jobs: vec![None; n],
            outputs: vec![None; n],
            errors: HashMap::new(),
            cancel_when_created: HashSet::new(),
            stored,
        }
    }

    fn job_of(&self, r: Role) -> Option<JobId> {
        match r {
            Role::Step(i) => self.jobs.get(i).copied().flatten(),
            Role::Compensation(i) => self.comp_jobs.get(i).copied().flatten(),
        }
    }

    fn key(&self, r: Role) -> String {
        match r {
            Role::Step(i) => format!("pipeline/{}/{}", self.id, self.stored.spec.steps[i].name),
            Role::Compensation(i) => format!(
                "pipeline/{}/compensate/{}",
                self.id, self.stored.spec.steps[i].name
            ),
        }
    }

    /// The job a step (or a compensation) runs: its spec, in the
    /// pipeline's tenant, under its idempotency key, with the outputs of
    /// the steps it depends on (a compensation: of the step it undoes) in
    /// its environment. The step's own environment wins over an output of
    /// the same name.
    fn job_spec(&self, r: Role, keys: Option<&SecretKeys>) -> Result<JobSpec, String> {
        let spec = &self.stored.spec;
        let (job, name, inputs, slot): (&JobSpec, String, Vec<usize>, usize) = match r {
            Role::Step(i) => (
                &spec.steps[i].job,
                spec.steps[i].name.clone(),
                self.graph.deps[i].clone(),
                i,
            ),
            Role::Compensation(i) => {
                let c = self.graph.compensation[i].unwrap_or(0);
                (
                    &spec.compensations[c].job,
                    format!("{}:{}", spec.compensations[c].name, spec.steps[i].name),
                    vec![i],
                    spec.steps.len() + c,
                )
            }
        };
        let mut job = match keys {
            Some(k) if !job.secrets.is_empty() => k
                .open(sealing_id(self.id, slot), job)
                .map_err(|e| e.to_string())?,
            _ => job.clone(),
        };
        job.tenant = spec.tenant.clone();
        job.idempotency_key = Some(self.key(r));
        if job.name.is_empty() {
            job.name = if spec.name.is_empty() {
                name.clone()
            } else {
                format!("{}/{name}", spec.name)
            };
        }
        job.labels
            .insert("hodei.pipeline".into(), self.id.to_string());
        match r {
            Role::Step(i) => job
                .labels
                .insert("hodei.step".into(), spec.steps[i].name.clone()),
            Role::Compensation(i) => job
                .labels
                .insert("hodei.compensates".into(), spec.steps[i].name.clone()),
        };
        for d in inputs {
            if let Some(out) = &self.outputs[d] {
                for (k, v) in out.iter() {
                    job.env
                        .entry(output_variable(&spec.steps[d].name, k))
                        .or_insert_with(|| v.clone());
                }
            }
        }
        Ok(job)
    }

    fn status(&self, summary: bool) -> proto::PipelineStatus {
        let spec = &self.stored.spec;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for s in self.run.steps() {
            *counts.entry(s.as_str().to_string()).or_default() += 1;
        }
        let steps = if summary {
            Vec::new()
        } else {
            spec.steps
                .iter()
                .enumerate()
                .map(|(i, s)| proto::StepStatus {
                    name: s.name.clone(),
                    state: self
                        .run
                        .step(i)
                        .unwrap_or(StepState::Waiting)
                        .as_str()
                        .to_string(),
                    job_id: self.jobs[i].map(|j| j.to_string()).unwrap_or_default(),
                    depends_on: s.depends_on.clone(),
                    condition: s.condition.as_str().to_string(),
                    outputs: self.outputs[i]
                        .as_ref()
                        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    error: self.errors.get(&Role::Step(i)).cloned().unwrap_or_default(),
                    compensate: s.compensate.clone().unwrap_or_default(),
                })
                .collect()
        };
        let compensations = self
            .run
            .compensations()
            .iter()
            .map(|&(i, o)| proto::CompensationRun {
                step: spec.steps[i].name.clone(),
                compensation: spec.steps[i].compensate.clone().unwrap_or_default(),
                state: match o {
                    None => "running",
                    Some(o) => StepState::Ended(o).as_str(),
                }
                .to_string(),
                job_id: self.comp_jobs[i].map(|j| j.to_string()).unwrap_or_default(),
            })
            .collect();
        proto::PipelineStatus {
            pipeline_id: self.id.to_string(),
            name: spec.name.clone(),
            tenant: spec.tenant.as_str().to_string(),
            state: self.run.state().as_str().to_string(),
            continue_on_failure: !spec.fail_fast,
            created_at_ms: self.stored.created_at.0,
            steps,
            compensations,
            counts: counts.into_iter().collect(),
            step_count: spec.steps.len() as u64,
        }
    }
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

async fn marks<S: Store>(store: &S, id: JobId) -> Result<Marks, StoreError> {
    match store.record(MARKS, &id.to_string()).await? {
        Some(v) => decode("marks", &v),
        None => Ok(Marks::default()),
    }
}

/// Tells the pipelines task that a job of `id` ended, with its outputs
/// when it is a step that succeeded.
async fn send_end<S: Store>(
    store: &S,
    tx: &mpsc::Sender<Cmd>,
    id: JobId,
    role: Role,
    job: JobId,
    outcome: StepOutcome,
    attempt: u32,
) {
    let outputs = if outcome == StepOutcome::Succeeded && matches!(role, Role::Step(_)) {
        Some(load_outputs(store, job, attempt).await)
    } else {
        None
    };
    let _ = tx
        .send(Cmd::Ended {
            id,
            role,
            job,
            outcome,
            outputs,
        })
        .await;
}

/// A job that ended, waiting to be fed in the order jobs ended.
type Final = Reverse<(Timestamp, Role, JobId, StepOutcome, u32)>;

/// Rebuilds a pipeline from its record and its jobs, creating nothing:
/// each decision to start a step looks its job up by idempotency key, and
/// the jobs found ended are fed in the order they ended. Returns the
/// pipeline and the jobs decided but never created (to create, if it is
/// to go on), with the cancels it decided for jobs still running.
async fn replay<S: Store>(
    store: &S,
    id: JobId,
    stored: Arc<Stored>,
    graph: PipelineGraph,
    marks: &Marks,
) -> Result<(Active, Replayed), StoreError> {
    let mut a = Active::new(id, stored, graph);
    let tenant = a.stored.spec.tenant.clone();
    let mut left = Replayed::default();
    let mut finals: BinaryHeap<Final> = BinaryHeap::new();
    let mut ds: VecDeque<Decision> = a.run.start().into();
    loop {
        while let Some(d) = ds.pop_front() {
            let role = match d {
                Decision::Start(i) => Role::Step(i),
                Decision::Compensate(i) => Role::Compensation(i),
                Decision::Cancel(i) => {
                    left.cancels.push(Role::Step(i));
                    continue;
                }
                Decision::CancelCompensation(i) => {
                    left.cancels.push(Role::Compensation(i));
                    continue;
                }
                Decision::Ended(_) => continue,
            };
            match store.find_idempotent(&tenant, &a.key(role)).await? {
                Some(job) => {
                    set_job(&mut a, role, job.id);
                    if job.is_terminal() {
                        finals.push(Reverse((
                            job.updated_at,
                            role,
                            job.id,
                            outcome_of(&job.state),
                            job.attempt,
                        )));
                    }
                }
                None => left.missing.push(role),
            }
        }
        let Some(Reverse((_, role, job, outcome, attempt))) = finals.pop() else {
            break;
        };
        let outputs = if outcome == StepOutcome::Succeeded && matches!(role, Role::Step(_)) {
            Some(load_outputs(store, job, attempt).await)
        } else {
            None
        };
        ds.extend(feed(&mut a, role, outcome, outputs));
    }
    if marks.cancelled && !a.run.state().is_final() {
        // Steps decided but never created did not run: they end cancelled
        // with the pipeline.
        let mut ds: VecDeque<Decision> = a.run.cancel().into();
        let never: HashSet<Role> = left.missing.drain(..).collect();
        while let Some(d) = ds.pop_front() {
            match d {
                Decision::Cancel(i) if never.contains(&Role::Step(i)) => {
                    ds.extend(a.run.step_ended(i, StepOutcome::Cancelled));
                }
                Decision::CancelCompensation(i) if never.contains(&Role::Compensation(i)) => {
                    ds.extend(a.run.compensation_ended(i, StepOutcome::Cancelled));
                }
                Decision::Cancel(i) => left.cancels.push(Role::Step(i)),
                Decision::CancelCompensation(i) => left.cancels.push(Role::Compensation(i)),
                _ => {}
            }
        }
    }
    Ok((a, left))
}

/// What a replay leaves to do.
#[derive(Default)]
struct Replayed {
    /// Jobs decided, never created.
    missing: Vec<Role>,
    /// Cancels decided (their jobs may have ended since).
    cancels: Vec<Role>,
}

fn set_job(a: &mut Active, role: Role, job: JobId) {
    match role {
        Role::Step(i) => a.jobs[i] = Some(job),
        Role::Compensation(i) => a.comp_jobs[i] = Some(job),
    }
}

/// Tells the run how a job of its ended.
fn feed(
    a: &mut Active,
    role: Role,
    outcome: StepOutcome,
    outputs: Option<BTreeMap<String, String>>,
) -> Vec<Decision> {
    match role {
        Role::Step(i) => {
            if let Some(o) = outputs
                && a.run.step(i) == Some(StepState::Running)
            {
                a.outputs[i] = Some(Arc::new(o));
            }
            a.run.step_ended(i, outcome)
        }
        Role::Compensation(i) => a.run.compensation_ended(i, outcome),
    }
}

struct Task<S: Store> {
    engine: EngineHandle<S>,
    keys: Option<Arc<SecretKeys>>,
    /// Its own queue, for the tasks it spawns to report back on (weak:
    /// the queue closes once every caller's handle is gone).
    tx: mpsc::WeakSender<Cmd>,
    active: HashMap<JobId, Active>,
    by_job: HashMap<JobId, (JobId, Role)>,
    /// Pipelines ended lately, oldest first.
    ended: VecDeque<JobId>,
}

impl<S: Store> Task<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, mut stopping: watch::Receiver<bool>) {
        // Subscribed before reading the store: no end is missed between.
        let mut events = self.engine.bus().subscribe();
        if let Err(e) = self.recover().await {
            tracing::error!(error = %e, "cannot recover pipelines; they resume at the next start");
        }
        loop {
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                e = events.recv() => match e {
                    Ok(e) => self.event(&e),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "pipelines fell behind the events; checking their jobs");
                        self.check_all();
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
    }

    async fn recover(&mut self) -> Result<(), StoreError> {
        let store = Arc::clone(self.engine.store());
        let marks: HashMap<String, Marks> = store
            .records(MARKS)
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k, decode("marks", &v).ok()?)))
            .collect();
        let mut resumed = 0usize;
        for (key, v) in store.records(PIPELINE).await? {
            let m = marks.get(&key).cloned().unwrap_or_default();
            if m.ended.is_some() {
                continue;
            }
            let Ok(id) = key.parse::<JobId>() else {
                continue;
            };
            let stored: Stored = match decode("pipeline", &v) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(pipeline = %id, error = %e, "unreadable pipeline record");
                    continue;
                }
            };
            let Ok(graph) = stored.spec.validate() else {
                tracing::error!(pipeline = %id, "stored pipeline no longer valid");
                continue;
            };
            let (a, left) = replay(&*store, id, Arc::new(stored), graph, &m).await?;
            self.adopt(a, left);
            resumed += 1;
        }
        if resumed > 0 {
            tracing::info!(pipelines = resumed, "pipelines resumed");
        }
        Ok(())
    }

    /// Takes a replayed pipeline over: creates what it decided and never
    /// created, cancels what it decided to cancel.
    fn adopt(&mut self, mut a: Active, left: Replayed) {
        let id = a.id;
        for (i, j) in a.jobs.iter().enumerate() {
            if let Some(j) = j {
                self.by_job.insert(*j, (id, Role::Step(i)));
            }
        }
        for (i, j) in a.comp_jobs.iter().enumerate() {
            if let Some(j) = j {
                self.by_job.insert(*j, (id, Role::Compensation(i)));
            }
        }
        for r in left.cancels {
            if let Some(j) = a.job_of(r) {
                self.cancel_job(j);
            }
        }
        let state = a.run.state();
        for r in left.missing {
            self.create(&mut a, r);
        }
        // Running jobs may have ended while the replay read: check them.
        let running: Vec<JobId> = a
            .jobs
            .iter()
            .chain(a.comp_jobs.iter())
            .flatten()
            .copied()
            .collect();
        self.active.insert(id, a);
        for j in running {
            self.check(j);
        }
        if state.is_final() {
            self.finish(id, state);
        }
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Start {
                id,
                stored,
                graph,
                reply,
            } => {
                let mut a = Active::new(id, stored, graph);
                let ds = a.run.start();
                self.active.insert(id, a);
                self.act(id, ds);
                if let Some(a) = self.active.get(&id) {
                    let _ = reply.send(a.status(false));
                }
            }
            Cmd::Cancel { id, reply } => {
                let Some(a) = self.active.get_mut(&id) else {
                    // Not in memory: ended, or not ours; the caller reads
                    // its status from the store.
                    let _ = reply.send(Ok(None));
                    return;
                };
                if a.run.state().is_final() {
                    let _ = reply.send(Err(PipelineError::Ended(id, a.run.state().as_str())));
                    return;
                }
                let ds = a.run.cancel();
                self.act(id, ds);
                let _ = reply.send(Ok(self.active.get(&id).map(|a| a.status(false))));
            }
            Cmd::Status { id, summary, reply } => {
                let _ = reply.send(self.active.get(&id).map(|a| a.status(summary)));
            }
            Cmd::States { reply } => {
                let _ = reply.send(
                    self.active
                        .iter()
                        .map(|(id, a)| (*id, a.run.state()))
                        .collect(),
                );
            }
            Cmd::Created { id, role, job } => self.created(id, role, job),
            Cmd::Ended {
                id,
                role,
                job,
                outcome,
                outputs,
            } => {
                let Some(a) = self.active.get_mut(&id) else {
                    return;
                };
                if a.job_of(role) != Some(job) {
                    return;
                }
                let ds = feed(a, role, outcome, outputs);
                self.act(id, ds);
            }
        }
    }

    fn created(&mut self, id: JobId, role: Role, job: Result<Box<Job>, String>) {
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        match job {
            Ok(job) => {
                set_job(a, role, job.id);
                let cancel = a.cancel_when_created.remove(&role);
                self.by_job.insert(job.id, (id, role));
                if cancel {
                    self.cancel_job(job.id);
                }
                // It may have ended before it was known here (or be an
                // earlier job returned by its key).
                self.check(job.id);
            }
            Err(why) => {
                tracing::warn!(pipeline = %id, ?role, %why, "a pipeline job could not be created");
                a.errors.insert(role, why);
                let ds = match role {
                    Role::Step(i) => a.run.step_ended(i, StepOutcome::Failed),
                    Role::Compensation(i) => a.run.compensation_ended(i, StepOutcome::Failed),
                };
                self.act(id, ds);
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
        let Some(&(id, role)) = self.by_job.get(job) else {
            return;
        };
        match to {
            JobState::Succeeded | JobState::Cancelled => {
                self.report_end(id, role, *job, outcome_of(to), *attempt)
            }
            // Final only with no attempt left: the stored job says.
            JobState::Failed { .. } | JobState::TimedOut | JobState::Lost => self.check(*job),
            _ => {}
        }
    }

    /// Reads a step's outputs (if it succeeded) off the task, then feeds
    /// its end.
    fn report_end(&self, id: JobId, role: Role, job: JobId, outcome: StepOutcome, attempt: u32) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let store = Arc::clone(self.engine.store());
        tokio::spawn(async move {
            send_end(&*store, &tx, id, role, job, outcome, attempt).await;
        });
    }

    /// Reads a job off the task and feeds its end if it has ended.
    fn check(&self, job: JobId) {
        let Some(&(id, role)) = self.by_job.get(&job) else {
            return;
        };
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let store = Arc::clone(self.engine.store());
        tokio::spawn(async move {
            let Ok(Some(j)) = store.get_job(job).await else {
                return;
            };
            if j.is_terminal() {
                let outcome = outcome_of(&j.state);
                send_end(&*store, &tx, id, role, job, outcome, j.attempt).await;
            }
        });
    }

    /// After missed events: every job of a running pipeline is checked.
    fn check_all(&self) {
        for j in self.by_job.keys() {
            self.check(*j);
        }
    }

    fn cancel_job(&self, job: JobId) {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            // One that already ended is not an error here.
            let _ = engine.cancel(job).await;
        });
    }

    /// Creates the job for `role` off the task; its id comes back as
    /// `Created`.
    fn create(&self, a: &mut Active, role: Role) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let spec = a.job_spec(role, self.keys.as_deref());
        let engine = self.engine.clone();
        let id = a.id;
        tokio::spawn(async move {
            let job = match spec.and_then(|s| s.validate().map(|()| s).map_err(|e| e.to_string())) {
                Err(e) => Err(e),
                Ok(spec) => engine
                    .submit(spec)
                    .await
                    .map(|(j, _)| Box::new(j))
                    .map_err(|e| e.to_string()),
            };
            let _ = tx.send(Cmd::Created { id, role, job }).await;
        });
    }

    /// Carries out a run's decisions.
    fn act(&mut self, id: JobId, ds: Vec<Decision>) {
        let Some(mut a) = self.active.remove(&id) else {
            return;
        };
        let mut ended = None;
        for d in ds {
            match d {
                Decision::Start(i) => self.create(&mut a, Role::Step(i)),
                Decision::Compensate(i) => self.create(&mut a, Role::Compensation(i)),
                Decision::Cancel(i) => self.cancel_role(&mut a, Role::Step(i)),
                Decision::CancelCompensation(i) => self.cancel_role(&mut a, Role::Compensation(i)),
                Decision::Ended(s) => ended = Some(s),
            }
        }
        self.active.insert(id, a);
        if let Some(s) = ended {
            self.finish(id, s);
        }
    }

    fn cancel_role(&self, a: &mut Active, role: Role) {
        match a.job_of(role) {
            Some(j) => self.cancel_job(j),
            None => {
                a.cancel_when_created.insert(role);
            }
        }
    }

    /// A pipeline ended: its final state is stored, its jobs forgotten,
    /// and it is kept a while for status.
    fn finish(&mut self, id: JobId, state: PipelineState) {
        tracing::info!(pipeline = %id, state = state.as_str(), "pipeline ended");
        if let Some(a) = self.active.get(&id) {
            for j in a.jobs.iter().chain(a.comp_jobs.iter()).flatten() {
                self.by_job.remove(j);
            }
        }
        let store = Arc::clone(self.engine.store());
        tokio::spawn(async move {
            let write = async {
                // Secret values are not kept past the pipeline's end, as
                // a job's are not past its own.
                if let Some(v) = store.record(PIPELINE, &id.to_string()).await? {
                    let mut stored: Stored = decode("pipeline", &v)?;
                    if erase_secrets(&mut stored.spec) {
                        store
                            .put_record(PIPELINE, &id.to_string(), encode("pipeline", &stored)?)
                            .await?;
                    }
                }
                let mut m = marks(&*store, id).await?;
                m.ended = Some(state.as_str().to_string());
                store
                    .put_record(MARKS, &id.to_string(), encode("marks", &m)?)
                    .await
            };
            if let Err(e) = write.await {
                // Replayed at the next start, it ends again and is
                // stored then.
                tracing::warn!(pipeline = %id, error = %e, "cannot store a pipeline's end");
            }
        });
        self.ended.push_back(id);
        while self.ended.len() > ENDED_KEPT {
            if let Some(old) = self.ended.pop_front() {
                self.active.remove(&old);
            }
        }
    }
}
