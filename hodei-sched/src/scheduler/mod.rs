//! [`Scheduler`]: Wfq + ClusterState + placement, driven by events.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hodei_core::{
    Clock, ConcurrencyLimit, Constraint, ExitStatus, JobId, JobSpec, JobState, Lifecycle,
    Resources, RetryPolicy, TenantId, Transition, WorkerId,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use slab::Slab;

use crate::cluster::{ClusterState, WorkerSpec};
use crate::error::SchedError;
use crate::placement::{PlacementRequest, Policy, Rejection};
use crate::wfq::Wfq;

mod dependencies;
mod dispatch;
mod jobs;
mod keys;
mod quotas;
mod timers;

use dependencies::Finished;
use jobs::Tracked;
use keys::Keys;
use quotas::Quotas;
use timers::{Timer, Timers};

/// What the scheduler needs to know about a job: the scheduling-relevant
/// part of its [`JobSpec`].
#[derive(Clone, Debug, PartialEq)]
pub struct JobRequest {
    /// The job.
    pub id: JobId,
    /// Its tenant (the fair-queuing flow).
    pub tenant: TenantId,
    /// Priority within the tenant.
    pub priority: u8,
    /// What it needs from a worker.
    pub resources: Resources,
    /// Label selectors for the worker.
    pub constraints: Vec<Constraint>,
    /// Its retry policy.
    pub retry: RetryPolicy,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Jobs that must succeed first.
    pub dependencies: Vec<JobId>,
    /// Its concurrency key and limit, if it names one.
    pub concurrency: Option<ConcurrencyLimit>,
}

impl JobRequest {
    /// The request for job `id` with spec `spec`.
    pub fn from_spec(id: JobId, spec: &JobSpec) -> Self {
        JobRequest {
            id,
            tenant: spec.tenant.clone(),
            priority: spec.priority,
            resources: spec.resources,
            constraints: spec.constraints.clone(),
            retry: spec.retry,
            timeout: spec.timeout,
            dependencies: spec.dependencies.clone(),
            concurrency: spec.concurrency.clone(),
        }
    }
}

/// How an attempt ended, as its worker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Exit code 0.
    Succeeded,
    /// Any other end of the process.
    Failed(ExitStatus),
    /// The worker stopped it at its timeout.
    TimedOut,
}

/// What the host must do after an event.
///
/// Apply them in order: persist every `Changed` (an `Assign` is always
/// preceded by its `Changed` to Assigned), then send `Assign` and `Stop`
/// to the workers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A job changed state.
    Changed {
        /// The job.
        job: JobId,
        /// The state it left.
        from: JobState,
        /// The state it entered.
        to: JobState,
        /// Its attempt after the change.
        attempt: u32,
        /// The transition that made the change, so a store can apply the
        /// same one (compare-and-set on `from` and the attempt before).
        cause: Transition,
    },
    /// Send the job to the worker as this attempt.
    Assign {
        /// The job.
        job: JobId,
        /// The worker chosen.
        worker: WorkerId,
        /// The attempt (the fencing token the worker must echo).
        attempt: u32,
    },
    /// Tell the worker to stop this attempt (cancelled or timed out); its
    /// reservation is held until the worker reports the end or is lost.
    Stop {
        /// The job.
        job: JobId,
        /// The worker running it.
        worker: WorkerId,
        /// The attempt to stop.
        attempt: u32,
    },
}

/// Settings of a [`Scheduler`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// How to choose among fitting workers.
    pub policy: Policy,
    /// How many jobs that wait for capacity a placement pass looks past,
    /// in fair order, for jobs that fit elsewhere (the backfill window).
    /// Those it looks past stay in the fair queue where they were.
    pub backfill_window: usize,
    /// Finished jobs remembered so later submissions can depend on them.
    pub remember_finished: usize,
    /// Extra time past a job's timeout before the scheduler itself ends an
    /// attempt its worker has not reported.
    pub timeout_grace: Duration,
    /// How long a recovered Assigned or Running job waits for its worker to
    /// reconnect and re-attach it before it is Lost.
    pub reattach_grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            policy: Policy::BinPack,
            backfill_window: 64,
            remember_finished: 100_000,
            timeout_grace: Duration::from_secs(30),
            reattach_grace: Duration::from_secs(60),
        }
    }
}

/// Counts of what the scheduler holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Jobs tracked (not finished).
    pub tracked: usize,
    /// Jobs in the fair queue.
    pub queued: usize,
    /// Jobs the last placement pass found waiting for capacity (the head
    /// holding a worker, and those looked past in the backfill window).
    pub blocked: usize,
    /// Jobs that no current worker could ever run.
    pub unplaceable: usize,
    /// Jobs held back by their tenant's quota.
    pub over_quota: usize,
    /// Jobs held back because their concurrency key is at its limit.
    pub over_concurrency: usize,
    /// Jobs waiting for a retry backoff to end.
    pub retrying: usize,
}

/// The scheduler: fair queuing across tenants, placement onto the
/// [`ClusterState`], retries, timeouts, dependencies and quotas.
///
/// It is **event-driven**: each method applies one event (a submission, a
/// cancel, a worker joining or lost, an attempt starting or ending, capacity
/// freed, a timer due) and then places whatever became placeable,
/// returning the [`Action`]s for the host to carry out. It never sleeps or
/// polls: timers (retry backoffs, timeouts, re-attach deadlines, worker
/// liveness) are reported by [`next_deadline`](Scheduler::next_deadline),
/// and the host calls [`tick`](Scheduler::tick) then. Time comes from the
/// [`Clock`], so tests run on virtual time.
///
/// **Fair from the first dispatch**: jobs leave the fair queue only when
/// they are placed. A placement pass takes jobs in fair order; one that
/// finds no room now is put back where it was ([`Wfq::unpop`]), its tenant
/// refunded, so waiting for capacity costs no tenant its share: whatever
/// the backlog, dispatches follow the weights within the bound
/// [`Wfq`] documents.
///
/// **Large jobs**: the first job in fair order that finds no room becomes
/// the head. The scheduler holds one worker for it (the fitting worker
/// with the most free capacity) and places no other job there, so that
/// worker drains and the head starts: it cannot starve. Jobs behind it that
/// fit elsewhere keep being placed (backfill): a pass looks past up to
/// `backfill_window` waiting jobs.
///
/// **Quotas**: a tenant may be capped in what it holds at once; its jobs
/// beyond the cap wait without blocking other tenants.
///
/// **Concurrency keys**: at most `limit` jobs naming a key hold a worker
/// at once, whatever their tenants; the others wait, out of the fair
/// queue, without blocking jobs of other keys.
///
/// Owned by one task (`&mut self`); the [`ClusterState`] it places onto is
/// shared, so heartbeats and queries run concurrently with scheduling.
pub struct Scheduler<C: Clock> {
    config: SchedulerConfig,
    clock: C,
    cluster: Arc<ClusterState>,
    /// Tracked jobs, in slots laid out in admission order so that dispatch,
    /// which mostly follows that order, walks memory forward.
    jobs: Slab<Tracked>,
    index: HashMap<JobId, usize>,
    /// Queued jobs as (slot, id); the id guards against a reused slot.
    wfq: Wfq<TenantId, (usize, JobId)>,
    /// The first job found waiting for capacity, and the worker held for
    /// it; out of the fair queue while it is the head.
    head: Option<(JobId, Option<WorkerId>)>,
    /// Jobs the last pass found waiting for capacity.
    blocked: usize,
    /// Changes whenever placement could find more than before (capacity
    /// freed, workers changed, the head moved).
    epoch: u64,
    /// Queued jobs (waiting for a worker) by tenant and priority.
    queued: HashMap<(TenantId, u8), usize>,
    unplaceable: Vec<JobId>,
    ready_again: VecDeque<JobId>,
    quotas: Quotas,
    keys: Keys,
    /// Attempts ended by the scheduler (cancel, timeout) whose workers have
    /// not confirmed yet: their reservations stay until then.
    stopping: HashMap<JobId, (WorkerId, TenantId, Resources)>,
    /// Recovered jobs waiting for their worker to claim them, by worker.
    unclaimed: HashMap<WorkerId, Vec<JobId>>,
    timers: Timers,
    finished: Finished,
    seen_topology: u64,
    capacity_freed: bool,
    /// Jobs waiting out a retry backoff.
    retrying: usize,
    /// Why jobs of one shape (resources, constraints) fit nowhere, found
    /// during the current placement pass: explaining scans every worker,
    /// so jobs of the same shape share one scan.
    explained: HashMap<(Resources, Vec<Constraint>), Option<Rejection>>,
}

impl<C: Clock> fmt::Debug for Scheduler<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<C: Clock> Scheduler<C> {
    /// A scheduler placing onto `cluster`, reading time from `clock`.
    pub fn new(config: SchedulerConfig, cluster: Arc<ClusterState>, clock: C) -> Self {
        let remember = config.remember_finished;
        Scheduler {
            config,
            clock,
            seen_topology: cluster.topology_version(),
            cluster,
            jobs: Slab::new(),
            index: HashMap::default(),
            wfq: Wfq::new(),
            head: None,
            blocked: 0,
            epoch: 0,
            queued: HashMap::default(),
            unplaceable: Vec::new(),
            ready_again: VecDeque::new(),
            quotas: Quotas::default(),
            keys: Keys::default(),
            stopping: HashMap::default(),
            unclaimed: HashMap::default(),
            timers: Timers::default(),
            finished: Finished::new(remember),
            capacity_freed: false,
            retrying: 0,
            explained: HashMap::default(),
        }
    }

    /// The cluster state it places onto.
    pub fn cluster(&self) -> &Arc<ClusterState> {
        &self.cluster
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Sets a tenant's fair-share weight (at least 1; default 1).
    pub fn set_weight(&mut self, tenant: TenantId, weight: u32) {
        self.wfq.set_weight(tenant, weight);
    }

    /// Counts of what the scheduler holds.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            tracked: self.index.len(),
            queued: self.wfq.len(),
            blocked: self.blocked,
            unplaceable: self.unplaceable.len(),
            over_quota: self.quotas.parked(),
            over_concurrency: self.keys.parked(),
            retrying: self.retrying,
        }
    }

    /// A tracked job's lifecycle.
    pub fn lifecycle(&self, job: JobId) -> Option<Lifecycle> {
        self.get(job).map(|t| t.life)
    }

    /// Jobs waiting for a worker (Queued: in the fair queue, the head,
    /// over their tenant's quota, or fitting no current worker) by tenant
    /// and priority, sorted. Jobs waiting on dependencies or a retry
    /// backoff are not counted.
    pub fn queue_depths(&self) -> Vec<(TenantId, u8, usize)> {
        let mut v: Vec<(TenantId, u8, usize)> = self
            .queued
            .iter()
            .map(|((t, p), n)| (t.clone(), *p, *n))
            .collect();
        v.sort();
        v
    }

    /// Why a queued job is not running, if the scheduler can say.
    pub fn explain(&self, job: JobId) -> Option<Rejection> {
        let t = self.get(job)?;
        if t.life.state != JobState::Queued {
            return None;
        }
        self.cluster.explain(&PlacementRequest {
            resources: t.req.resources,
            constraints: &t.req.constraints,
            policy: self.config.policy,
            exclude: None,
            now: self.clock.now(),
        })
    }

    /// Runs `f`, then places whatever became placeable.
    fn run(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Vec<Action>) -> Result<(), SchedError>,
    ) -> Result<Vec<Action>, SchedError> {
        let mut out = Vec::new();
        f(self, &mut out)?;
        self.dispatch(&mut out);
        Ok(out)
    }

    /// Accepts a new job (Pending if it waits on dependencies, else Queued)
    /// and places what it can.
    ///
    /// # Errors
    ///
    /// [`SchedError::Duplicate`] for a job already tracked;
    /// [`SchedError::UnknownDependency`] for a dependency neither tracked nor
    /// remembered as finished. Nothing changes.
    pub fn submit(&mut self, req: JobRequest) -> Result<Vec<Action>, SchedError> {
        self.run(|s, out| s.admit(req, None, out))
    }

    /// Accepts many jobs, then places once. Returns the actions and the
    /// jobs refused, with why.
    pub fn submit_many(
        &mut self,
        reqs: impl IntoIterator<Item = JobRequest>,
    ) -> (Vec<Action>, Vec<(JobId, SchedError)>) {
        let reqs = reqs.into_iter();
        self.index.reserve(reqs.size_hint().0);
        self.jobs.reserve(reqs.size_hint().0);
        let mut out = Vec::with_capacity(reqs.size_hint().0.saturating_mul(2));
        let mut refused = Vec::new();
        for req in reqs {
            let id = req.id;
            if let Err(e) = self.admit(req, None, &mut out) {
                refused.push((id, e));
            }
        }
        self.dispatch(&mut out);
        (out, refused)
    }

    /// Takes back a job [`submit`](Scheduler::submit) accepted but the host
    /// could not store: it leaves as if it had never been submitted, with
    /// no state change to store. If it was placed (its assignment must not
    /// have been sent), the room it held is freed and filled again.
    ///
    /// Meant for the job of the last submission whose first write failed:
    /// nothing else can depend on a job never stored.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownJob`] if the job is not tracked.
    pub fn withdraw(&mut self, job: JobId) -> Result<Vec<Action>, SchedError> {
        let k = *self.index.get(&job).ok_or(SchedError::UnknownJob(job))?;
        self.run(|s, _| {
            let Some(t) = s.jobs.get(k) else {
                return Ok(());
            };
            let (state, reserved, retrying) = (t.life.state, t.reserved, t.retrying);
            let (tenant, res) = (t.req.tenant.clone(), t.req.resources);
            let deps = t.req.dependencies.clone();
            if let Some(worker) = state.worker()
                && reserved
            {
                s.release(worker, job, &tenant, res);
            }
            if state == JobState::Queued {
                s.count_queued(k, -1);
            }
            if s.head.is_some_and(|(h, _)| h == job) {
                s.head = None;
                s.epoch += 1;
            }
            if retrying {
                s.retrying -= 1;
            }
            for dep in deps {
                if let Some(d) = s.get_mut(dep) {
                    d.dependents.retain(|x| *x != job);
                }
            }
            s.release_key(job);
            // What still names it (a fair-queue entry, a quota or
            // unplaceable list, a timer) finds no job and is skipped.
            s.forget(job);
            Ok(())
        })
    }

    /// Takes over a job recovered from a store, in the lifecycle it had.
    ///
    /// Queued and Pending jobs queue again; Assigned and Running ones wait
    /// up to `reattach_grace` for their worker to [`reattach`] them, then
    /// are Lost; Failed, TimedOut or Lost ones with attempts left retry.
    ///
    /// [`reattach`]: Scheduler::reattach
    ///
    /// # Errors
    ///
    /// [`SchedError::Duplicate`] for a job already tracked;
    /// [`SchedError::UnknownDependency`] for a dependency neither tracked nor
    /// remembered.
    pub fn adopt(&mut self, req: JobRequest, life: Lifecycle) -> Result<Vec<Action>, SchedError> {
        self.run(|s, out| s.admit(req, Some(life), out))
    }

    /// A worker that is running (or holds the result of) a recovered job
    /// claims it again: the job keeps its attempt and its reservation is
    /// restored.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownJob`]; [`SchedError::WrongWorker`] when the job was
    /// placed elsewhere; a stale attempt; a reservation that no longer fits.
    pub fn reattach(
        &mut self,
        worker: WorkerId,
        job: JobId,
        attempt: u32,
    ) -> Result<(), SchedError> {
        let k = *self.index.get(&job).ok_or(SchedError::UnknownJob(job))?;
        let t = self.jobs.get_mut(k).ok_or(SchedError::UnknownJob(job))?;
        if t.life.state.worker() != Some(worker) {
            return Err(SchedError::WrongWorker { job, worker });
        }
        if t.life.attempt != attempt {
            return Err(hodei_core::TransitionError::StaleAttempt {
                job,
                current: t.life.attempt,
                got: attempt,
            }
            .into());
        }
        if !t.reserved {
            self.cluster.reserve(worker, job, t.req.resources)?;
            t.reserved = true;
            let (tenant, res) = (t.req.tenant.clone(), t.req.resources);
            self.add_usage(tenant, res);
        }
        self.hold_key(job);
        Ok(())
    }

    /// Cancels a job. A queued or pending job ends at once; a running one
    /// ends too, and its worker is told to stop it.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownJob`] for a job not tracked (unknown or already
    /// final).
    pub fn cancel(&mut self, job: JobId) -> Result<Vec<Action>, SchedError> {
        if !self.index.contains_key(&job) {
            return Err(SchedError::UnknownJob(job));
        }
        self.run(|s, out| {
            s.cancel_tracked(job, out);
            Ok(())
        })
    }

    /// A worker registered (or re-registered without saying what it
    /// runs: its jobs are left as they are; see [`worker_rejoined`]).
    ///
    /// [`worker_rejoined`]: Scheduler::worker_rejoined
    ///
    /// # Errors
    ///
    /// [`SchedError::Cluster`] when the cluster refuses the registration.
    pub fn worker_joined(&mut self, spec: WorkerSpec) -> Result<Vec<Action>, SchedError> {
        let now = self.clock.now();
        self.cluster.register(spec, now)?;
        let at = now + self.cluster.config().heartbeat_timeout + Duration::from_millis(1);
        self.timers.check_liveness_by(at);
        self.run(|_, _| Ok(()))
    }

    /// A worker registered with jobs it still runs (a reconnect, or the
    /// first contact after a server restart): it is registered, each held
    /// (job, attempt) is re-attached with its reservation, and only then is
    /// anything new placed, so new work never takes the held jobs' room.
    /// The list is taken as complete: a job the server placed there that
    /// is not in it is Lost at once (and retried as its policy allows).
    /// Returns the actions and the held jobs refused (unknown, finished,
    /// or now another attempt): the worker should stop those.
    ///
    /// # Errors
    ///
    /// [`SchedError::Cluster`] when the cluster refuses the registration.
    pub fn worker_rejoined(
        &mut self,
        spec: WorkerSpec,
        held: &[(JobId, u32)],
    ) -> Result<(Vec<Action>, Vec<JobId>), SchedError> {
        let now = self.clock.now();
        let worker = spec.id;
        self.cluster.register(spec, now)?;
        let at = now + self.cluster.config().heartbeat_timeout + Duration::from_millis(1);
        self.timers.check_liveness_by(at);
        // What the server believes runs there: live reservations, held
        // across the disconnect, and recovered jobs not yet claimed.
        let mut believed = self
            .cluster
            .worker(worker)
            .map(|w| w.jobs)
            .unwrap_or_default();
        believed.extend(self.unclaimed.remove(&worker).unwrap_or_default());
        let refused = held
            .iter()
            .filter(|(job, attempt)| self.reattach(worker, *job, *attempt).is_err())
            .map(|(job, _)| *job)
            .collect();
        // The worker lists everything it runs or holds a result of: a job
        // it does not list never reached it or is gone. Lost now, not after
        // a timeout, so it is retried at once.
        let holds: HashSet<JobId> = held.iter().map(|(job, _)| *job).collect();
        let actions = self.run(|s, out| {
            for job in believed {
                if !holds.contains(&job) {
                    s.unassign(worker, job, out);
                }
            }
            Ok(())
        })?;
        Ok((actions, refused))
    }

    /// A worker asked to take no new jobs.
    ///
    /// # Errors
    ///
    /// [`SchedError::Cluster`] for an unknown worker.
    pub fn worker_draining(&mut self, worker: WorkerId) -> Result<Vec<Action>, SchedError> {
        self.cluster.drain(worker)?;
        self.run(|_, _| Ok(()))
    }

    /// A worker left or its connection is gone for good: its jobs are lost
    /// and retried as their policies allow.
    ///
    /// # Errors
    ///
    /// [`SchedError::Cluster`] for an unknown worker.
    pub fn worker_lost(&mut self, worker: WorkerId) -> Result<Vec<Action>, SchedError> {
        let mut jobs = self.cluster.deregister(worker)?;
        jobs.extend(self.unclaimed.remove(&worker).unwrap_or_default());
        self.run(|s, out| {
            for job in jobs {
                s.lose(worker, job, out);
            }
            Ok(())
        })
    }

    /// The worker started the attempt.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownJob`], [`SchedError::WrongWorker`], or the state
    /// machine's refusal (a stale attempt); nothing changes.
    pub fn job_started(
        &mut self,
        worker: WorkerId,
        job: JobId,
        attempt: u32,
    ) -> Result<Vec<Action>, SchedError> {
        self.run(|s, out| {
            s.check_holder(worker, job)?;
            s.apply(job, Transition::Start { attempt }, out)?;
            if let Some(t) = s.get(job).and_then(|t| t.req.timeout) {
                let at = s.clock.now() + t + s.config.timeout_grace;
                s.timers.set(at, Timer::Timeout(job, attempt));
            }
            Ok(())
        })
    }

    /// The worker reports the end of an attempt. A report for an attempt
    /// the scheduler already ended (cancelled, timed out) just releases its
    /// reservation.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownJob`], [`SchedError::WrongWorker`], or the state
    /// machine's refusal (a stale attempt); nothing changes.
    pub fn job_finished(
        &mut self,
        worker: WorkerId,
        job: JobId,
        attempt: u32,
        outcome: AttemptOutcome,
    ) -> Result<Vec<Action>, SchedError> {
        self.run(|s, out| {
            if let Some((w, tenant, res)) = s.stopping.get(&job).cloned()
                && w == worker
                && s.get(job)
                    .is_none_or(|t| t.life.state.worker() != Some(worker))
            {
                s.stopping.remove(&job);
                s.release(worker, job, &tenant, res);
                s.release_key(job);
                return Ok(());
            }
            s.check_holder(worker, job)?;
            let t = match outcome {
                AttemptOutcome::Succeeded => Transition::Succeed { attempt },
                AttemptOutcome::Failed(exit) => Transition::Fail { attempt, exit },
                AttemptOutcome::TimedOut => Transition::TimeOut { attempt },
            };
            s.end_attempt(job, t, out)
        })
    }
}
