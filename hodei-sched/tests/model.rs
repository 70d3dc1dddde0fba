//! The scheduler against a model, under random submissions, attempts that
//! end well or badly, cancels, workers joining and lost, quotas of time:
//! no worker is ever over-committed, each worker's allocation is the sum
//! of the reservations on it, a job is placed at most once per attempt and
//! only while it waits, no more jobs of a concurrency key hold a worker
//! (stopping ones included) than its limit, and no job is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hodei_core::{
    Clock, ExitStatus, JobId, JobSpec, JobState, ManualClock, Resources, Timestamp, WorkerId,
};
use hodei_sched::{
    Action, AttemptOutcome, ClusterConfig, ClusterState, JobRequest, Scheduler, SchedulerConfig,
    WorkerSpec,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Submit {
        tenant: u8,
        cpu: u32,
        priority: u8,
        attempts: u32,
        /// A concurrency key (`k0` limit 1, `k1` limit 2), or none.
        key: Option<u8>,
    },
    Join {
        cpu: u32,
    },
    Lose {
        worker: prop::sample::Index,
    },
    Start {
        which: prop::sample::Index,
    },
    Finish {
        which: prop::sample::Index,
        ok: bool,
    },
    Cancel {
        which: prop::sample::Index,
    },
    Advance {
        ms: u64,
    },
    /// A submission whose store write failed: submitted, then withdrawn.
    Withdrawn {
        cpu: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, prop_oneof![Just(500u32), Just(1000), Just(3000)], 0u8..8, 1u32..3, proptest::option::of(0u8..2))
            .prop_map(|(tenant, cpu, priority, attempts, key)| Op::Submit { tenant, cpu, priority, attempts, key }),
        1 => prop_oneof![Just(2000u32), Just(4000)].prop_map(|cpu| Op::Join { cpu }),
        1 => any::<prop::sample::Index>().prop_map(|worker| Op::Lose { worker }),
        3 => any::<prop::sample::Index>().prop_map(|which| Op::Start { which }),
        4 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(which, ok)| Op::Finish { which, ok }),
        1 => any::<prop::sample::Index>().prop_map(|which| Op::Cancel { which }),
        1 => (1u64..3000).prop_map(|ms| Op::Advance { ms }),
        1 => prop_oneof![Just(500u32), Just(3000)].prop_map(|cpu| Op::Withdrawn { cpu }),
    ]
}

fn action_job(a: &Action) -> JobId {
    match a {
        Action::Changed { job, .. } | Action::Assign { job, .. } | Action::Stop { job, .. } => *job,
        other => panic!("the model does not know {other:?}"),
    }
}

struct Run {
    sched: Scheduler<ManualClock>,
    clock: ManualClock,
    workers: Vec<WorkerId>,
    resources: HashMap<JobId, Resources>,
    /// Jobs not yet seen reaching a final state.
    open: HashSet<JobId>,
    /// (job, attempt) -> worker, for every assignment ever made.
    placed: HashMap<(JobId, u32), WorkerId>,
    /// Assignments the worker has not reported the end of: (job, attempt, worker).
    out: Vec<(JobId, u32, WorkerId)>,
    state: HashMap<JobId, JobState>,
    /// Each job's concurrency key and its limit.
    keys: HashMap<JobId, (String, u32)>,
}

impl Run {
    fn take(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Changed { job, from, to, .. } => {
                    if let Some(s) = self.state.get(&job) {
                        assert_eq!(*s, from, "job {job} changed from a state it was not in");
                    }
                    self.state.insert(job, to);
                    let final_ = self.sched.lifecycle(job).is_none_or(|l| l.is_terminal());
                    if final_ {
                        self.open.remove(&job);
                    }
                }
                Action::Assign {
                    job,
                    worker,
                    attempt,
                } => {
                    assert!(
                        self.placed.insert((job, attempt), worker).is_none(),
                        "job {job} placed twice as attempt {attempt}"
                    );
                    assert!(
                        matches!(self.state.get(&job), Some(JobState::Assigned { .. })),
                        "an Assign without its change to Assigned"
                    );
                    self.out.push((job, attempt, worker));
                }
                // The worker confirms a stop by reporting the end.
                Action::Stop { .. } => {}
                other => panic!("the model does not know {other:?}"),
            }
        }
    }

    fn check(&self) {
        let cluster = self.sched.cluster();
        for w in cluster.workers() {
            let mut sum = Resources::ZERO;
            for j in &w.jobs {
                sum = sum.checked_add(&self.resources[j]).unwrap();
            }
            assert_eq!(
                w.allocated, sum,
                "worker {}: allocation is not the sum of its reservations",
                w.id
            );
            assert!(
                w.allocated.fits(&w.capacity),
                "worker {} over-committed",
                w.id
            );
        }
        for j in &self.open {
            assert!(
                self.sched.lifecycle(*j).is_some(),
                "job {j} was lost: neither final nor tracked"
            );
        }
        // Jobs whose process may be running (assigned, not yet reported
        // ended: stopping ones too), per key.
        let mut holding: HashMap<&str, HashSet<JobId>> = HashMap::new();
        for (job, _, _) in &self.out {
            if let Some((k, _)) = self.keys.get(job) {
                holding.entry(k.as_str()).or_default().insert(*job);
            }
        }
        for (k, jobs) in holding {
            let limit = if k == "k0" { 1 } else { 2 };
            assert!(
                jobs.len() <= limit,
                "key {k}: {} jobs hold it, limit {limit}",
                jobs.len()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_scheduler_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..150)) {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let cluster = Arc::new(ClusterState::new({
            let mut c = ClusterConfig::default();
            c.heartbeat_timeout = Duration::from_secs(3600);
            c
        }));
        let sched = Scheduler::new(
            {
                let mut c = SchedulerConfig::default();
                c.backfill_window = 4;
                c
            },
            cluster,
            clock.clone(),
        );
        let mut r = Run {
            sched,
            clock,
            workers: Vec::new(),
            resources: HashMap::new(),
            open: HashSet::new(),
            placed: HashMap::new(),
            out: Vec::new(),
            state: HashMap::new(),
            keys: HashMap::new(),
        };
        for op in ops {
            match op {
                Op::Submit { tenant, cpu, priority, attempts, key } => {
                    let mut spec = JobSpec::argv(["true"]);
                    spec.concurrency = key.map(|k| hodei_core::ConcurrencyLimit {
                        key: format!("k{k}"),
                        limit: u32::from(k) + 1,
                    });
                    spec.tenant = format!("t{tenant}").parse().unwrap();
                    spec.priority = priority;
                    spec.resources = Resources::new(cpu, 64, 0);
                    spec.retry.max_attempts = attempts;
                    spec.retry.backoff.initial = Duration::from_millis(100);
                    let req = JobRequest::from_spec(JobId::new(), &spec);
                    r.resources.insert(req.id, spec.resources);
                    if let Some(c) = &spec.concurrency {
                        r.keys.insert(req.id, (c.key.clone(), c.limit));
                    }
                    r.open.insert(req.id);
                    r.state.insert(req.id, JobState::Queued);
                    let actions = r.sched.submit(req).unwrap();
                    r.take(actions);
                }
                Op::Join { cpu } => {
                    let id = WorkerId::new();
                    r.workers.push(id);
                    let actions = r.sched.worker_joined(WorkerSpec {
                        id,
                        labels: BTreeMap::new(),
                        capacity: Resources::new(cpu, 1024, 0),
                    }).unwrap();
                    r.take(actions);
                }
                Op::Lose { worker } => {
                    if r.workers.is_empty() { continue; }
                    let w = r.workers.remove(worker.index(r.workers.len()));
                    r.out.retain(|(_, _, ow)| *ow != w);
                    let actions = r.sched.worker_lost(w).unwrap();
                    r.take(actions);
                }
                Op::Start { which } => {
                    if r.out.is_empty() { continue; }
                    let (job, attempt, w) = r.out[which.index(r.out.len())];
                    // A report about an ended attempt may be refused; it
                    // must never break anything.
                    if let Ok(actions) = r.sched.job_started(w, job, attempt) {
                        r.take(actions);
                    }
                }
                Op::Finish { which, ok } => {
                    if r.out.is_empty() { continue; }
                    let (job, attempt, w) = r.out.remove(which.index(r.out.len()));
                    let outcome = if ok {
                        AttemptOutcome::Succeeded
                    } else {
                        AttemptOutcome::Failed(ExitStatus::Code(1))
                    };
                    let _ = r.sched.job_started(w, job, attempt).map(|a| r.take(a));
                    if let Ok(actions) = r.sched.job_finished(w, job, attempt, outcome) {
                        r.take(actions);
                    }
                }
                Op::Cancel { which } => {
                    let open: Vec<JobId> = r.open.iter().copied().collect();
                    if open.is_empty() { continue; }
                    let mut open = open;
                    open.sort();
                    let job = open[which.index(open.len())];
                    if let Ok(actions) = r.sched.cancel(job) {
                        r.take(actions);
                    }
                }
                Op::Withdrawn { cpu } => {
                    let mut spec = JobSpec::argv(["true"]);
                    spec.resources = Resources::new(cpu, 64, 0);
                    let req = JobRequest::from_spec(JobId::new(), &spec);
                    let id = req.id;
                    r.resources.insert(id, spec.resources);
                    r.state.insert(id, JobState::Queued);
                    let actions = r.sched.submit(req).unwrap();
                    // Its own actions are never carried out: the host
                    // stores nothing of it and sends nothing.
                    let (own, others): (Vec<Action>, Vec<Action>) =
                        actions.into_iter().partition(|a| action_job(a) == id);
                    r.take(others);
                    drop(own);
                    let actions = r.sched.withdraw(id).unwrap();
                    prop_assert!(r.sched.lifecycle(id).is_none(), "a withdrawn job is still tracked");
                    prop_assert!(
                        actions.iter().all(|a| action_job(a) != id),
                        "a withdrawn job still acts"
                    );
                    prop_assert!(
                        r.sched.cluster().workers().iter().all(|w| !w.jobs.contains(&id)),
                        "a withdrawn job still holds a reservation"
                    );
                    r.state.remove(&id);
                    r.take(actions);
                    prop_assert!(r.sched.withdraw(id).is_err());
                }
                Op::Advance { ms } => {
                    r.clock.advance(Duration::from_millis(ms));
                    let actions = r.sched.tick();
                    r.take(actions);
                }
            }
            r.check();
        }
        // Then room for everything, and every attempt ends well: each job
        // reaches a final state; none waits forever.
        let big = WorkerId::new();
        let actions = r.sched.worker_joined(WorkerSpec {
            id: big,
            labels: BTreeMap::new(),
            capacity: Resources::new(1_000_000, 1_000_000, 0),
        }).unwrap();
        r.take(actions);
        for _ in 0..50 {
            if r.open.is_empty() { break; }
            for (job, attempt, w) in std::mem::take(&mut r.out) {
                let _ = r.sched.job_started(w, job, attempt).map(|a| r.take(a));
                if let Ok(actions) = r.sched.job_finished(w, job, attempt, AttemptOutcome::Succeeded) {
                    r.take(actions);
                }
            }
            r.clock.advance(Duration::from_secs(10));
            let actions = r.sched.tick();
            r.take(actions);
            r.check();
        }
        prop_assert!(
            r.open.is_empty(),
            "jobs never finished: {:?} ({:?}) at {:?}; {:?}",
            r.open,
            r.open.iter().map(|j| (r.sched.lifecycle(*j), r.keys.get(j))).collect::<Vec<_>>(),
            r.clock.now(),
            r.sched.stats()
        );
    }
}
