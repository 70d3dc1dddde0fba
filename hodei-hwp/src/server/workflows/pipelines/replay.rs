//! A pipeline's state rebuilt after a restart from its record and its
//! jobs, their ends fed in the order they happened.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;

use hodei_core::{JobId, PipelineGraph, Timestamp};
use hodei_sched::{Decision, StepOutcome, StepState};
use hodei_store::{Store, StoreError, decode};
use tokio::sync::mpsc;

use super::active::{Active, Role, outcome_of};
use super::outputs::load_outputs;
use super::{Cmd, MARKS, Marks, Stored};

pub(super) async fn marks<S: Store>(store: &S, id: JobId) -> Result<Marks, StoreError> {
    match store.record(MARKS, &id.to_string()).await? {
        Some(v) => decode("marks", &v),
        None => Ok(Marks::default()),
    }
}

/// Tells the pipelines task that a job of `id` ended, with its outputs
/// when it is a step that succeeded.
pub(super) async fn send_end<S: Store>(
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
pub(super) type Final = Reverse<(Timestamp, Role, JobId, StepOutcome, u32)>;

/// Rebuilds a pipeline from its record and its jobs, creating nothing:
/// each decision to start a step looks its job up by idempotency key, and
/// the jobs found ended are fed in the order they ended. Returns the
/// pipeline and the jobs decided but never created (to create, if it is
/// to go on), with the cancels it decided for jobs still running.
pub(super) async fn replay<S: Store>(
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
pub(super) struct Replayed {
    /// Jobs decided, never created.
    pub(super) missing: Vec<Role>,
    /// Cancels decided (their jobs may have ended since).
    pub(super) cancels: Vec<Role>,
}

pub(super) fn set_job(a: &mut Active, role: Role, job: JobId) {
    match role {
        Role::Step(i) => a.jobs[i] = Some(job),
        Role::Compensation(i) => a.comp_jobs[i] = Some(job),
    }
}

/// Tells the run how a job of its ended.
pub(super) fn feed(
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
