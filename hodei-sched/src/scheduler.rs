//! [`Scheduler`]: Wfq + ClusterState + placement, driven by events.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hodei_core::{
    Bus, Clock, Constraint, Event, ExitStatus, JobId, JobSpec, JobState, Lifecycle, Resources,
    RetryPolicy, TenantId, Timestamp, Transition, WorkerId,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use slab::Slab;

use crate::cluster::{ClusterState, WorkerSpec};
use crate::error::SchedError;
use crate::placement::{PlacementRequest, Policy, Rejection};
use crate::wfq::Wfq;

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
    /// Jobs waiting for a retry backoff to end.
    pub retrying: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retry(JobId),
    Timeout(JobId, u32),
    Reattach(JobId, u32),
}

struct Tracked {
    req: JobRequest,
    life: Lifecycle,
    /// Dependencies not yet succeeded.
    waiting_on: usize,
    dependents: Vec<JobId>,
    /// Holds a reservation on the worker in its state.
    reserved: bool,
    /// Topology version at which it was last found to need other workers,
    /// or to be merely waiting for capacity.
    classified_at: Option<u64>,
    /// The capacity epoch at which it was last found waiting for capacity:
    /// until capacity changes, trying it again would find the same.
    waited_at: Option<u64>,
    retrying: bool,
}

enum Try {
    Placed,
    Gone,
    Wait,
    Never,
    OverQuota,
}

/// What a pass does with a job it tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Placed, gone, the head, or set aside (over quota, unplaceable): out
    /// of the fair queue.
    Done,
    /// No room now and not the head: it stays queued where it was.
    WaitsForCapacity,
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
/// Owned by one task (`&mut self`); the [`ClusterState`] it places onto is
/// shared, so heartbeats and queries run concurrently with scheduling.
pub struct Scheduler<C: Clock> {
    config: SchedulerConfig,
    clock: C,
    cluster: Arc<ClusterState>,
    bus: Option<Bus<Event>>,
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
    quotas: HashMap<TenantId, Resources>,
    usage: HashMap<TenantId, Resources>,
    over_quota: HashMap<TenantId, VecDeque<JobId>>,
    /// Attempts ended by the scheduler (cancel, timeout) whose workers have
    /// not confirmed yet: their reservations stay until then.
    stopping: HashMap<JobId, (WorkerId, TenantId, Resources)>,
    /// Recovered jobs waiting for their worker to claim them, by worker.
    unclaimed: HashMap<WorkerId, Vec<JobId>>,
    timers: BinaryHeap<Reverse<(Timestamp, Timer)>>,
    liveness_at: Option<Timestamp>,
    finished: HashMap<JobId, bool>,
    finished_order: VecDeque<JobId>,
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
        Scheduler {
            config,
            clock,
            seen_topology: cluster.topology_version(),
            cluster,
            bus: None,
            jobs: Slab::new(),
            index: HashMap::default(),
            wfq: Wfq::new(),
            head: None,
            blocked: 0,
            epoch: 0,
            queued: HashMap::default(),
            unplaceable: Vec::new(),
            ready_again: VecDeque::new(),
            quotas: HashMap::default(),
            usage: HashMap::default(),
            over_quota: HashMap::default(),
            stopping: HashMap::default(),
            unclaimed: HashMap::default(),
            timers: BinaryHeap::new(),
            liveness_at: None,
            finished: HashMap::default(),
            finished_order: VecDeque::new(),
            capacity_freed: false,
            retrying: 0,
            explained: HashMap::default(),
        }
    }

    fn get(&self, job: JobId) -> Option<&Tracked> {
        self.index.get(&job).and_then(|&k| self.jobs.get(k))
    }

    fn get_mut(&mut self, job: JobId) -> Option<&mut Tracked> {
        let k = *self.index.get(&job)?;
        self.jobs.get_mut(k)
    }

    fn forget(&mut self, job: JobId) -> Option<Tracked> {
        let k = self.index.remove(&job)?;
        self.jobs.try_remove(k)
    }

    /// Publishes a [`Event::JobChanged`] for every state change on `bus`.
    pub fn with_bus(mut self, bus: Bus<Event>) -> Self {
        self.bus = Some(bus);
        self
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

    /// Caps what a tenant's jobs may hold at once; `None` lifts the cap.
    pub fn set_quota(&mut self, tenant: TenantId, quota: Option<Resources>) -> Vec<Action> {
        match quota {
            Some(q) => {
                self.quotas.insert(tenant.clone(), q);
            }
            None => {
                self.quotas.remove(&tenant);
            }
        }
        self.unpark(&tenant);
        self.run(|_, _| Ok(())).unwrap_or_default()
    }

    /// Counts of what the scheduler holds.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            tracked: self.index.len(),
            queued: self.wfq.len(),
            blocked: self.blocked,
            unplaceable: self.unplaceable.len(),
            over_quota: self.over_quota.values().map(VecDeque::len).sum(),
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

    /// Adds `delta` to the Queued count of the job in `slot`.
    fn count_queued(&mut self, slot: usize, delta: isize) {
        let Some(t) = self.jobs.get(slot) else { return };
        let key = (t.req.tenant.clone(), t.req.priority);
        let n = self.queued.entry(key.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.queued.remove(&key);
        }
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

    /// Records that a job not tracked here finished, so later submissions
    /// may depend on it (for instance, from the store after a restart).
    pub fn record_finished(&mut self, job: JobId, succeeded: bool) {
        if self.finished.insert(job, succeeded).is_none() {
            self.finished_order.push_back(job);
            while self.finished_order.len() > self.config.remember_finished {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
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
    pub fn adopt(&mut self, req: JobRequest, life: Lifecycle) -> Result<Vec<Action>, SchedError> {
        self.run(|s, out| s.admit(req, Some(life), out))
    }

    fn admit(
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
            for dep in &req.dependencies {
                if self.index.contains_key(dep) {
                    waiting_on += 1;
                } else {
                    match self.finished.get(dep) {
                        Some(true) => {}
                        Some(false) => failed_dependency = true,
                        None => {
                            return Err(SchedError::UnknownDependency {
                                job: id,
                                dependency: *dep,
                            });
                        }
                    }
                }
            }
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
                self.unclaimed.entry(worker).or_default().push(id);
                let at = now + self.config.reattach_grace;
                self.timers
                    .push(Reverse((at, Timer::Reattach(id, attempt))));
            }
            _ => {
                // Failed, TimedOut or Lost with attempts left: retry now.
                self.apply(id, Transition::Retry, out)?;
                self.enqueue(id);
            }
        }
        Ok(())
    }

    /// A worker that is running (or holds the result of) a recovered job
    /// claims it again: the job keeps its attempt and its reservation is
    /// restored.
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
        Ok(())
    }

    /// Cancels a job. A queued or pending job ends at once; a running one
    /// ends too, and its worker is told to stop it.
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
    pub fn worker_joined(&mut self, spec: WorkerSpec) -> Result<Vec<Action>, SchedError> {
        let now = self.clock.now();
        self.cluster.register(spec, now)?;
        let at = now + self.cluster.config().heartbeat_timeout + Duration::from_millis(1);
        self.liveness_at = Some(self.liveness_at.map_or(at, |t| t.min(at)));
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
    pub fn worker_rejoined(
        &mut self,
        spec: WorkerSpec,
        held: &[(JobId, u32)],
    ) -> Result<(Vec<Action>, Vec<JobId>), SchedError> {
        let now = self.clock.now();
        let worker = spec.id;
        self.cluster.register(spec, now)?;
        let at = now + self.cluster.config().heartbeat_timeout + Duration::from_millis(1);
        self.liveness_at = Some(self.liveness_at.map_or(at, |t| t.min(at)));
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
    pub fn worker_draining(&mut self, worker: WorkerId) -> Result<Vec<Action>, SchedError> {
        self.cluster.drain(worker)?;
        self.run(|_, _| Ok(()))
    }

    /// A worker left or its connection is gone for good: its jobs are lost
    /// and retried as their policies allow.
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
                s.timers.push(Reverse((at, Timer::Timeout(job, attempt))));
            }
            Ok(())
        })
    }

    /// The worker reports the end of an attempt. A report for an attempt
    /// the scheduler already ended (cancelled, timed out) just releases its
    /// reservation.
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

    fn check_holder(&self, worker: WorkerId, job: JobId) -> Result<(), SchedError> {
        let t = self.get(job).ok_or(SchedError::UnknownJob(job))?;
        match t.life.state.worker() {
            Some(w) if w == worker => Ok(()),
            _ => Err(SchedError::WrongWorker { job, worker }),
        }
    }

    /// Places whatever is placeable now.
    pub fn schedule(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.dispatch(&mut out);
        out
    }

    /// When [`tick`](Scheduler::tick) next has work: the earliest retry,
    /// timeout or re-attach deadline, or worker heartbeat expiry.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        match (timer, self.liveness_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles every timer due at the clock's time and expires workers
    /// whose heartbeats stopped, then places what it can.
    pub fn tick(&mut self) -> Vec<Action> {
        let now = self.clock.now();
        let mut out = Vec::new();
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.fire(timer, &mut out);
        }
        if self.liveness_at.is_some_and(|t| t <= now) {
            for lost in self.cluster.expire(now) {
                for job in lost.jobs {
                    // The cluster already released the reservations.
                    if let Some(t) = self.get_mut(job) {
                        t.reserved = false;
                    }
                    self.lose(lost.id, job, &mut out);
                }
            }
            self.liveness_at = self.cluster.next_expiry();
            self.capacity_freed = true;
        }
        self.dispatch(&mut out);
        out
    }

    fn fire(&mut self, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::Retry(job) => {
                let ready = self.get_mut(job).is_some_and(|t| {
                    let due = t.retrying;
                    t.retrying = false;
                    due
                });
                if ready {
                    self.retrying -= 1;
                }
                if ready && self.apply(job, Transition::Retry, out).is_ok() {
                    self.enqueue(job);
                }
            }
            Timer::Timeout(job, attempt) => {
                let Some(t) = self.get(job) else { return };
                if !matches!(t.life.state, JobState::Running { attempt: a, .. } if a == attempt) {
                    return;
                }
                if let Some(worker) = t.life.state.worker() {
                    out.push(Action::Stop {
                        job,
                        worker,
                        attempt,
                    });
                    self.hand_to_stopping(job, worker);
                }
                let _ = self.end_attempt(job, Transition::TimeOut { attempt }, out);
            }
            Timer::Reattach(job, attempt) => {
                let Some(t) = self.get(job) else { return };
                if t.reserved || t.life.attempt != attempt || !t.life.state.is_active() {
                    return;
                }
                let _ = self.end_attempt(job, Transition::Lose { attempt }, out);
            }
        }
    }

    /// Moves a reservation from a job's live attempt to the stopping set.
    fn hand_to_stopping(&mut self, job: JobId, worker: WorkerId) {
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
    fn unassign(&mut self, worker: WorkerId, job: JobId, out: &mut Vec<Action>) {
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

    fn lose(&mut self, worker: WorkerId, job: JobId, out: &mut Vec<Action>) {
        if let Some((w, tenant, res)) = self.stopping.get(&job).cloned()
            && w == worker
        {
            self.stopping.remove(&job);
            self.sub_usage(&tenant, res);
        }
        let Some(t) = self.get(job) else { return };
        if t.life.state.worker() != Some(worker) {
            return;
        }
        let attempt = t.life.attempt;
        let _ = self.end_attempt(job, Transition::Lose { attempt }, out);
    }

    /// Ends the current attempt with `t`, releases its reservation, and
    /// either schedules a retry or retires the job.
    fn end_attempt(
        &mut self,
        job: JobId,
        t: Transition,
        out: &mut Vec<Action>,
    ) -> Result<(), SchedError> {
        let worker = self.get(job).and_then(|x| x.life.state.worker());
        self.apply(job, t, out)?;
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
            self.timers.push(Reverse((at, Timer::Retry(job))));
        } else if tr.life.is_terminal() {
            self.retire(job, out);
        }
        Ok(())
    }

    fn release(&mut self, worker: WorkerId, job: JobId, tenant: &TenantId, res: Resources) {
        if self.cluster.release(worker, job).is_some() {
            self.sub_usage(tenant, res);
        }
        self.capacity_freed = true;
    }

    fn add_usage(&mut self, tenant: TenantId, res: Resources) {
        let u = self.usage.entry(tenant).or_default();
        *u = u.checked_add(&res).unwrap_or(*u);
    }

    fn sub_usage(&mut self, tenant: &TenantId, res: Resources) {
        if let Some(u) = self.usage.get_mut(tenant) {
            *u = u.saturating_sub(&res);
        }
        self.unpark(tenant);
    }

    fn unpark(&mut self, tenant: &TenantId) {
        if let Some(q) = self.over_quota.remove(tenant) {
            self.ready_again.extend(q);
        }
    }

    fn cancel_tracked(&mut self, job: JobId, out: &mut Vec<Action>) {
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
    fn retire(&mut self, job: JobId, out: &mut Vec<Action>) {
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

    fn enqueue(&mut self, job: JobId) {
        let Some(&k) = self.index.get(&job) else {
            return;
        };
        if let Some(t) = self.jobs.get_mut(k) {
            t.classified_at = None;
            self.wfq
                .push(t.req.tenant.clone(), t.req.priority, 1, (k, job));
        }
    }

    fn apply(
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
        let Some(tr) = self.jobs.get(k) else {
            return Ok(to);
        };
        out.push(Action::Changed {
            job,
            from,
            to,
            attempt,
            cause: t,
        });
        if let Some(bus) = &self.bus {
            bus.publish(Event::JobChanged {
                job,
                tenant: tr.req.tenant.clone(),
                from,
                to,
                attempt,
                at: self.clock.now(),
            });
        }
        Ok(to)
    }

    fn dispatch(&mut self, out: &mut Vec<Action>) {
        let now = self.clock.now();
        self.explained.clear();
        let topology = self.cluster.topology_version();
        if topology != self.seen_topology {
            self.seen_topology = topology;
            self.capacity_freed = true;
            // Workers changed: jobs that fit nowhere get another look,
            // through the fair queue, so a backlog built while no worker
            // could take it is still shared by weight.
            for job in std::mem::take(&mut self.unplaceable) {
                self.enqueue(job);
            }
            if let Some((_, Some(w))) = self.head
                && !self.cluster.is_healthy(w, now)
            {
                self.head = self.head.map(|(j, _)| (j, None));
            }
        }
        if std::mem::take(&mut self.capacity_freed) {
            self.epoch += 1;
            // The head goes first: a worker is being held for it.
            if let Some((head, _)) = self.head {
                self.place_one(head, now, out);
            }
        }
        // Jobs are taken in fair order; those that must wait go back where
        // they were once the pass is over, their tenants refunded.
        let mut looked_past = Vec::new();
        let window = self.config.backfill_window.max(1);
        while looked_past.len() < window {
            if let Some(job) = self.ready_again.pop_front() {
                if self.place_one(job, now, out) == Placement::WaitsForCapacity {
                    self.enqueue(job);
                }
                continue;
            }
            let Some(d) = self.wfq.pop() else { break };
            let (slot, job) = d.item;
            // A cancelled job leaves its entry behind; its slot may hold
            // another job by now.
            let Some(t) = self.jobs.get(slot).filter(|t| t.req.id == job) else {
                continue;
            };
            if self.head.is_some() && t.waited_at == Some(self.epoch) {
                // Nothing changed since it last found no room.
                looked_past.push(d);
                continue;
            }
            if self.place_one(job, now, out) == Placement::WaitsForCapacity {
                looked_past.push(d);
            }
        }
        self.blocked = looked_past.len() + usize::from(self.head.is_some());
        for d in looked_past.into_iter().rev() {
            self.wfq.unpop(d);
        }
    }

    /// Tries to place `job`; a job that must wait for capacity becomes the
    /// head if there is none, else it is reported so the caller keeps it
    /// queued.
    fn place_one(&mut self, job: JobId, now: Timestamp, out: &mut Vec<Action>) -> Placement {
        let is_head = self.head.is_some_and(|(h, _)| h == job);
        let tried = self.try_place(job, now, out);
        if is_head && !matches!(tried, Try::Wait) {
            self.head = None;
            // Its worker is no longer held: others may fit there now.
            self.epoch += 1;
        }
        match tried {
            Try::Placed | Try::Gone => Placement::Done,
            Try::Wait if is_head => Placement::Done,
            Try::Wait => {
                let epoch = self.epoch;
                if let Some(t) = self.get_mut(job) {
                    t.waited_at = Some(epoch);
                }
                if self.head.is_some() {
                    return Placement::WaitsForCapacity;
                }
                let target = self.get(job).and_then(|t| {
                    self.cluster.reservation_target(&PlacementRequest {
                        resources: t.req.resources,
                        constraints: &t.req.constraints,
                        policy: self.config.policy,
                        exclude: None,
                        now,
                    })
                });
                self.head = Some((job, target));
                // Other workers are no longer weighed against this one.
                self.epoch += 1;
                Placement::Done
            }
            Try::Never => {
                self.unplaceable.push(job);
                Placement::Done
            }
            Try::OverQuota => {
                if let Some(t) = self.get(job) {
                    self.over_quota
                        .entry(t.req.tenant.clone())
                        .or_default()
                        .push_back(job);
                }
                Placement::Done
            }
        }
    }

    fn try_place(&mut self, job: JobId, now: Timestamp, out: &mut Vec<Action>) -> Try {
        let Some(&k) = self.index.get(&job) else {
            return Try::Gone;
        };
        let Some(t) = self.jobs.get(k) else {
            return Try::Gone;
        };
        if t.life.state != JobState::Queued {
            return Try::Gone;
        }
        let tenant = &t.req.tenant;
        let res = t.req.resources;
        if let Some(q) = self.quotas.get(tenant) {
            let used = self.usage.get(tenant).copied().unwrap_or_default();
            if !used.checked_add(&res).is_some_and(|u| u.fits(q)) {
                return Try::OverQuota;
            }
        }
        let exclude = match self.head {
            Some((h, w)) if h != job => w,
            _ => None,
        };
        let req = PlacementRequest {
            resources: res,
            constraints: &t.req.constraints,
            policy: self.config.policy,
            exclude,
            now,
        };
        let Some(worker) = self.cluster.place_and_reserve(&req, job) else {
            // Classify once per topology: explaining scans every worker.
            let topology = self.seen_topology;
            if t.classified_at == Some(topology) {
                return Try::Wait;
            }
            let shape = (res, t.req.constraints.clone());
            let why = match self.explained.get(&shape) {
                Some(why) => why.clone(),
                None => {
                    let why = self.cluster.explain(&req);
                    self.explained.insert(shape, why.clone());
                    why
                }
            };
            if let Some(tr) = self.jobs.get_mut(k) {
                tr.classified_at = Some(topology);
            }
            return match why {
                Some(r) if r.needs_new_workers() => Try::Never,
                _ => Try::Wait,
            };
        };
        let tenant = tenant.clone();
        self.add_usage(tenant, res);
        if let Some(tr) = self.jobs.get_mut(k) {
            tr.reserved = true;
        }
        match self.apply(job, Transition::Assign { worker }, out) {
            Ok(JobState::Assigned { attempt, .. }) => {
                out.push(Action::Assign {
                    job,
                    worker,
                    attempt,
                });
                Try::Placed
            }
            _ => {
                self.cluster.release(worker, job);
                Try::Gone
            }
        }
    }
}
