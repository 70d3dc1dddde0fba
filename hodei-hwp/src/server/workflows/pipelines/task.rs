//! The task that drives every running pipeline: commands from the
//! handle, the engine's events, and the jobs its decisions create.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hodei_core::{Event, Job, JobId, JobState, RecvError};
use hodei_sched::{Decision, PipelineState, StepOutcome};
use hodei_store::{Store, StoreError, decode, encode};
use tokio::sync::{mpsc, watch};

use super::active::{Active, Role, erase_secrets, outcome_of};
use super::replay::{Replayed, feed, marks, replay, send_end, set_job};
use super::{Cmd, ENDED_KEPT, MARKS, Marks, PIPELINE, PipelineError, Stored};
use crate::server::engine::EngineHandle;
use crate::server::security::secrets::SecretKeys;

pub(super) struct Task<S: Store> {
    pub(super) engine: EngineHandle<S>,
    pub(super) keys: Option<Arc<SecretKeys>>,
    /// Its own queue, for the tasks it spawns to report back on (weak:
    /// the queue closes once every caller's handle is gone).
    pub(super) tx: mpsc::WeakSender<Cmd>,
    pub(super) active: HashMap<JobId, Active>,
    pub(super) by_job: HashMap<JobId, (JobId, Role)>,
    /// Pipelines ended lately, oldest first.
    pub(super) ended: VecDeque<JobId>,
}

impl<S: Store> Task<S> {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut stopping: watch::Receiver<bool>,
    ) {
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

    pub(super) async fn recover(&mut self) -> Result<(), StoreError> {
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
    pub(super) fn adopt(&mut self, mut a: Active, left: Replayed) {
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

    pub(super) fn command(&mut self, c: Cmd) {
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

    pub(super) fn created(&mut self, id: JobId, role: Role, job: Result<Box<Job>, String>) {
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

    pub(super) fn event(&mut self, e: &Event) {
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
    pub(super) fn report_end(
        &self,
        id: JobId,
        role: Role,
        job: JobId,
        outcome: StepOutcome,
        attempt: u32,
    ) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let store = Arc::clone(self.engine.store());
        tokio::spawn(async move {
            send_end(&*store, &tx, id, role, job, outcome, attempt).await;
        });
    }

    /// Reads a job off the task and feeds its end if it has ended.
    pub(super) fn check(&self, job: JobId) {
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
    pub(super) fn check_all(&self) {
        for j in self.by_job.keys() {
            self.check(*j);
        }
    }

    pub(super) fn cancel_job(&self, job: JobId) {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            // One that already ended is not an error here.
            let _ = engine.cancel(job).await;
        });
    }

    /// Creates the job for `role` off the task; its id comes back as
    /// `Created`.
    pub(super) fn create(&self, a: &mut Active, role: Role) {
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
    pub(super) fn act(&mut self, id: JobId, ds: Vec<Decision>) {
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

    pub(super) fn cancel_role(&self, a: &mut Active, role: Role) {
        match a.job_of(role) {
            Some(j) => self.cancel_job(j),
            None => {
                a.cancel_when_created.insert(role);
            }
        }
    }

    /// A pipeline ended: its final state is stored, its jobs forgotten,
    /// and it is kept a while for status.
    pub(super) fn finish(&mut self, id: JobId, state: PipelineState) {
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
