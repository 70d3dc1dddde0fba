//! The job table: tracked jobs in slots, their state changes, and how an
//! attempt ends (retry, retire, cancel, lost).

use hodei_core::{Clock, JobId, JobState, Lifecycle, Resources, TenantId, Transition, WorkerId};

use super::timers::Timer;
use super::{Action, JobRequest, Scheduler};
use crate::error::SchedError;

/// A job the scheduler tracks, in its slot of the job table.
pub(super) struct Tracked {
    pub(super) req: JobRequest,
    pub(super) life: Lifecycle,
    /// Dependencies not yet succeeded.
    pub(super) waiting_on: usize,
    pub(super) dependents: Vec<JobId>,
    /// Holds a reservation on the worker in its state.
    pub(super) reserved: bool,
    /// Topology version at which it was last found to need other workers,
    /// or to be merely waiting for capacity.
    pub(super) classified_at: Option<u64>,
    /// The capacity epoch at which it was last found waiting for capacity:
    /// until capacity changes, trying it again would find the same.
    pub(super) waited_at: Option<u64>,
    pub(super) retrying: bool,
}

impl<C: Clock> Scheduler<C> {
    pub(super) fn get(&self, job: JobId) -> Option<&Tracked> {
        self.index.get(&job).and_then(|&k| self.jobs.get(k))
    }

    pub(super) fn get_mut(&mut self, job: JobId) -> Option<&mut Tracked> {
        let k = *self.index.get(&job)?;
        self.jobs.get_mut(k)
    }

    pub(super) fn forget(&mut self, job: JobId) -> Option<Tracked> {
        let k = self.index.remove(&job)?;
        self.jobs.try_remove(k)
    }

    /// Adds `delta` to the Queued count of the job in `slot`.
    pub(super) fn count_queued(&mut self, slot: usize, delta: isize) {
        let Some(t) = self.jobs.get(slot) else { return };
        let key = (t.req.tenant.clone(), t.req.priority);
        let n = self.queued.entry(key.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.queued.remove(&key);
        }
    }

    pub(super) fn enqueue(&mut self, job: JobId) {
        let Some(&k) = self.index.get(&job) else {
            return;
        };
        if let Some(t) = self.jobs.get_mut(k) {
            t.classified_at = None;
            self.wfq
                .push(t.req.tenant.clone(), t.req.priority, 1, (k, job));
        }
    }

    pub(super) fn apply(
        &mut self,
        job: JobId,
        t: Transition,
        out: &mut Vec<Action>,
    ) -> Result<JobState, SchedError> {
        let k = *self.index.get(&job).ok_or(SchedError::UnknownJob(job))?;
        let tr = self.jobs.get_mut(k).ok_or(SchedError::UnknownJob(job))?;
        let from = tr.life.state;
        let to = tr.life.transition(t)?;
        let attempt = tr.life.attempt;
        match (from == JobState::Queued, to == JobState::Queued) {
            (true, false) => self.count_queued(k, -1),
            (false, true) => self.count_queued(k, 1),
            _ => {}
        }
        out.push(Action::Changed {
            job,
            from,
            to,
            attempt,
            cause: t,
        });
        Ok(to)
    }

    pub(super) fn admit(
        &mut self,
        req: JobRequest,
        life: Option<Lifecycle>,
        out: &mut Vec<Action>,
    ) -> Result<(), SchedError> {
        let id = req.id;
        if self.index.contains_key(&id) {
            return Err(SchedError::Duplicate(id));
        }
        let life = life.unwrap_or_else(|| {
            Lifecycle::new(id, !req.dependencies.is_empty(), req.retry.max_attempts)
        });
        if life.is_terminal() {
            self.record_finished(id, life.state == JobState::Succeeded);
            return Ok(());
        }
        // Resolve dependencies before changing anything.
        let mut waiting_on = 0;
        let mut failed_dependency = false;
        if life.state == JobState::Pending {
            let r = self.resolve_dependencies(id, &req.dependencies)?;
            (waiting_on, failed_dependency) = (r.waiting_on, r.failed);
            for dep in &req.dependencies {
                if let Some(d) = self.get_mut(*dep) {
                    d.dependents.push(id);
                }
            }
        }
        let now = self.clock.now();
        let state = life.state;
        let slot = self.jobs.insert(Tracked {
            req,
            life,
            waiting_on,
            dependents: Vec::new(),
            reserved: false,
            classified_at: None,
            waited_at: None,
            retrying: false,
        });
        if state == JobState::Queued {
            self.count_queued(slot, 1);
        }
        self.index.insert(id, slot);
        match state {
            JobState::Pending if failed_dependency => self.cancel_tracked(id, out),
            JobState::Pending if waiting_on == 0 => {
                self.apply(id, Transition::DependenciesMet, out)?;
                self.enqueue(id);
            }
            JobState::Pending => {}
            JobState::Queued => self.enqueue(id),
            JobState::Assigned { attempt, worker } | JobState::Running { attempt, worker } => {
                // It may still run: it holds its key while its worker is
                // awaited.
                self.hold_key(id);
                self.unclaimed.entry(worker).or_default().push(id);
                let at = now + self.config.reattach_grace;
                self.timers.set(at, Timer::Reattach(id, attempt));
            }
            _ => {
                // Failed, TimedOut or Lost with attempts left: retry now.
                self.apply(id, Transition::Retry, out)?;
                self.enqueue(id);
            }
        }
        Ok(())
    }

    /// Ends the current attempt with `t`, releases its reservation, and
    /// either schedules a retry or retires the job.
    pub(super) fn end_attempt(
        &mut self,
        job: JobId,
        t: Transition,
        out: &mut Vec<Action>,
    ) -> Result<(), SchedError> {
        let worker = self.get(job).and_then(|x| x.life.state.worker());
        self.apply(job, t, out)?;
        self.release_key(job);
        let Some(tr) = self.get_mut(job) else {
            return Ok(());
        };
        if let Some(w) = worker
            && tr.reserved
        {
            tr.reserved = false;
            let (tenant, res) = (tr.req.tenant.clone(), tr.req.resources);
            self.release(w, job, &tenant, res);
        }
        let Some(k) = self.index.get(&job).copied() else {
            return Ok(());
        };
        let Some(tr) = self.jobs.get_mut(k) else {
            return Ok(());
        };
        if tr.life.awaits_retry() {
            let delay = tr.req.retry.delay_for(job, tr.life.attempt);
            tr.retrying = true;
            self.retrying += 1;
            let at = self.clock.now() + delay;
            self.timers.set(at, Timer::Retry(job));
        } else if tr.life.is_terminal() {
            self.retire(job, out);
        }
        Ok(())
    }

    pub(super) fn cancel_tracked(&mut self, job: JobId, out: &mut Vec<Action>) {
        let Some(t) = self.get(job) else { return };
        let state = t.life.state;
        if let Some(worker) = state.worker() {
            out.push(Action::Stop {
                job,
                worker,
                attempt: t.life.attempt,
            });
            self.hand_to_stopping(job, worker);
        }
        if self.apply(job, Transition::Cancel, out).is_ok() {
            self.retire(job, out);
        }
    }

    /// Forgets a job that reached a final state and settles its dependents.
    pub(super) fn retire(&mut self, job: JobId, out: &mut Vec<Action>) {
        self.release_key(job);
        let Some(t) = self.forget(job) else {
            return;
        };
        if t.retrying {
            self.retrying -= 1;
        }
        let succeeded = t.life.state == JobState::Succeeded;
        self.record_finished(job, succeeded);
        for dep in t.dependents {
            if succeeded {
                let ready = self.get_mut(dep).is_some_and(|d| {
                    d.waiting_on = d.waiting_on.saturating_sub(1);
                    d.waiting_on == 0 && d.life.state == JobState::Pending
                });
                if ready && self.apply(dep, Transition::DependenciesMet, out).is_ok() {
                    self.enqueue(dep);
                }
            } else {
                self.cancel_tracked(dep, out);
            }
        }
    }

    /// Moves a reservation from a job's live attempt to the stopping set.
    pub(super) fn hand_to_stopping(&mut self, job: JobId, worker: WorkerId) {
        if let Some(k) = self.index.get(&job).copied()
            && let Some(t) = self.jobs.get_mut(k)
            && t.reserved
        {
            t.reserved = false;
            self.stopping
                .insert(job, (worker, t.req.tenant.clone(), t.req.resources));
        }
    }

    /// The worker does not have the job: one that never started goes back
    /// to the queue with its attempt unspent; one that ran is Lost.
    pub(super) fn unassign(&mut self, worker: WorkerId, job: JobId, out: &mut Vec<Action>) {
        match self.get(job).map(|t| t.life.state) {
            Some(JobState::Assigned { worker: w, attempt }) if w == worker => {
                if self
                    .end_attempt(job, Transition::Requeue { attempt }, out)
                    .is_ok()
                {
                    self.enqueue(job);
                }
            }
            _ => self.lose(worker, job, out),
        }
    }

    pub(super) fn lose(&mut self, worker: WorkerId, job: JobId, out: &mut Vec<Action>) {
        if let Some((w, tenant, res)) = self.stopping.get(&job).cloned()
            && w == worker
        {
            self.stopping.remove(&job);
            self.sub_usage(&tenant, res);
            self.release_key(job);
        }
        let Some(t) = self.get(job) else { return };
        if t.life.state.worker() != Some(worker) {
            return;
        }
        let attempt = t.life.attempt;
        let _ = self.end_attempt(job, Transition::Lose { attempt }, out);
    }

    pub(super) fn release(
        &mut self,
        worker: WorkerId,
        job: JobId,
        tenant: &TenantId,
        res: Resources,
    ) {
        if self.cluster.release(worker, job).is_some() {
            self.sub_usage(tenant, res);
        }
        self.capacity_freed = true;
    }

    pub(super) fn check_holder(&self, worker: WorkerId, job: JobId) -> Result<(), SchedError> {
        let t = self.get(job).ok_or(SchedError::UnknownJob(job))?;
        match t.life.state.worker() {
            Some(w) if w == worker => Ok(()),
            _ => Err(SchedError::WrongWorker { job, worker }),
        }
    }
}
