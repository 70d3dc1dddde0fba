//! One pipeline in memory: its run, the job of each step, the spec of
//! the job a step becomes (secret values sealed for it), its status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hodei_core::{
    Job, JobId, JobSpec, JobState, PipelineGraph, PipelineSpec, Timestamp, output_variable,
};
use hodei_sched::{PipelineRun, StepOutcome, StepState};

use super::Stored;
use crate::proto;
use crate::server::security::secrets::{SecretKeys, SecretsError};

/// The id a step's (or a compensation's) secret values are sealed for in
/// the pipeline's record: one per job of the pipeline, so a sealed value
/// opens only for the job it was written for.
pub(super) fn sealing_id(pipeline: JobId, slot: usize) -> JobId {
    JobId::from_u128(pipeline.as_u128().wrapping_add(slot as u128 + 1))
}

/// Clears every secret value (names stay); true if there was one.
pub(super) fn erase_secrets(spec: &mut PipelineSpec) -> bool {
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
pub(super) fn seal(
    keys: &SecretKeys,
    id: JobId,
    spec: &mut PipelineSpec,
) -> Result<(), SecretsError> {
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
pub(super) enum Role {
    Step(usize),
    Compensation(usize),
}

pub(super) fn outcome_of(state: &JobState) -> StepOutcome {
    match state {
        JobState::Succeeded => StepOutcome::Succeeded,
        JobState::Cancelled => StepOutcome::Cancelled,
        _ => StepOutcome::Failed,
    }
}

/// One pipeline in memory.
pub(super) struct Active {
    pub(super) id: JobId,
    pub(super) stored: Arc<Stored>,
    pub(super) graph: PipelineGraph,
    pub(super) run: PipelineRun,
    /// Each step's job, once it exists.
    pub(super) jobs: Vec<Option<JobId>>,
    /// Each step's compensation job, once it exists.
    pub(super) comp_jobs: Vec<Option<JobId>>,
    /// What each step that succeeded published.
    pub(super) outputs: Vec<Option<Arc<BTreeMap<String, String>>>>,
    /// Why a job could not be created.
    pub(super) errors: HashMap<Role, String>,
    /// Cancelled while its job was being created: cancelled once it is.
    pub(super) cancel_when_created: HashSet<Role>,
}

impl Active {
    pub(super) fn new(id: JobId, stored: Arc<Stored>, graph: PipelineGraph) -> Active {
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

    pub(super) fn job_of(&self, r: Role) -> Option<JobId> {
        match r {
            Role::Step(i) => self.jobs.get(i).copied().flatten(),
            Role::Compensation(i) => self.comp_jobs.get(i).copied().flatten(),
        }
    }

    pub(super) fn key(&self, r: Role) -> String {
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
    pub(super) fn job_spec(&self, r: Role, keys: Option<&SecretKeys>) -> Result<JobSpec, String> {
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

    pub(super) fn status(&self, summary: bool) -> proto::PipelineStatus {
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
