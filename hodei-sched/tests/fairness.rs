//! Weighted fair order from the first dispatch, at every backlog size, and
//! queue depths that count exactly the jobs waiting for a worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::assigns;
use hodei_core::{JobId, JobSpec, ManualClock, Resources, TenantId, Timestamp, WorkerId};
use hodei_sched::{
    Action, AttemptOutcome, ClusterConfig, ClusterState, JobRequest, Scheduler, SchedulerConfig,
    WorkerSpec,
};
use proptest::prelude::*;

fn scheduler() -> Scheduler<ManualClock> {
    let cluster = Arc::new(ClusterState::new({
        let mut c = ClusterConfig::default();
        c.heartbeat_timeout = Duration::from_secs(3600);
        c
    }));
    Scheduler::new(
        SchedulerConfig::default(),
        cluster,
        ManualClock::new(Timestamp(1_000_000)),
    )
}

fn job(tenant: &str, priority: u8) -> JobRequest {
    let mut spec = JobSpec::argv(["true"]);
    spec.tenant = tenant.parse().unwrap();
    spec.priority = priority;
    spec.resources = Resources::new(1000, 1, 0);
    JobRequest::from_spec(JobId::new(), &spec)
}

/// A worker with room for `slots` jobs at a time.
fn worker(s: &mut Scheduler<ManualClock>, slots: u32) -> (WorkerId, Vec<Action>) {
    let id = WorkerId::new();
    let actions = s
        .worker_joined(WorkerSpec {
            id,
            labels: BTreeMap::new(),
            capacity: Resources::new(1000 * slots, 1_000_000, 0),
        })
        .unwrap();
    (id, actions)
}

/// Ends running jobs one at a time, oldest first, and returns the order in
/// which the waiting jobs were dispatched.
fn drain(
    s: &mut Scheduler<ManualClock>,
    mut running: std::collections::VecDeque<(JobId, WorkerId, u32)>,
) -> Vec<JobId> {
    let mut order = Vec::new();
    while let Some((job, w, attempt)) = running.pop_front() {
        s.job_started(w, job, attempt).unwrap();
        let actions = s
            .job_finished(w, job, attempt, AttemptOutcome::Succeeded)
            .unwrap();
        for a in assigns(&actions) {
            order.push(a.0);
            running.push_back(a);
        }
    }
    order
}

/// Every prefix of `order` in which both tenants still had jobs waiting
/// keeps their service, divided by weight, within the bound of start-time
/// fair queuing with unit costs: |s_f / w_f - s_g / w_g| <= 1/w_f + 1/w_g.
fn assert_prefixes_fair(order: &[JobId], owner: &HashMap<JobId, usize>, weights: &[u64]) {
    let n = weights.len();
    let total: Vec<u64> = (0..n)
        .map(|t| owner.values().filter(|&&o| o == t).count() as u64)
        .collect();
    let mut served = vec![0u64; n];
    for (i, j) in order.iter().enumerate() {
        served[owner[j]] += 1;
        for f in 0..n {
            for g in 0..n {
                // Both backlogged through this whole prefix.
                if f == g || served[f] >= total[f] || served[g] >= total[g] {
                    continue;
                }
                let gap = (served[f] * weights[g]).abs_diff(served[g] * weights[f]);
                assert!(
                    gap <= weights[f] + weights[g],
                    "after {} dispatches: served {served:?}, weights {weights:?}",
                    i + 1
                );
            }
        }
    }
}

/// The case seen: a worker busy, 40 jobs of a tenant of weight 1 submitted
/// one by one, then 40 of a tenant of weight 4. Four of every five of the
/// first dispatches go to the second.
#[test]
fn weights_hold_from_the_first_dispatch_with_a_busy_worker() {
    let mut s = scheduler();
    s.set_weight("light".parse().unwrap(), 1);
    s.set_weight("heavy".parse().unwrap(), 4);
    let (w, _) = worker(&mut s, 1);
    let busy = assigns(&s.submit(job("filler", 0)).unwrap());
    assert_eq!(busy.len(), 1);
    let mut owner = HashMap::new();
    for (t, name) in ["light", "heavy"].iter().enumerate() {
        for _ in 0..40 {
            let j = job(name, 0);
            owner.insert(j.id, t);
            assert!(assigns(&s.submit(j).unwrap()).is_empty());
        }
    }
    let order = drain(&mut s, busy.into());
    assert_eq!(order.len(), 80);
    let heavy_first_10 = order[..10].iter().filter(|j| owner[*j] == 1).count();
    assert!(
        heavy_first_10 >= 7,
        "heavy got {heavy_first_10} of the first 10"
    );
    assert_prefixes_fair(&order, &owner, &[1, 4]);
    let _ = w;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random weights, random interleavings of submissions across tenants
    /// (random priorities within each), a worker with room for 1 to 4 jobs
    /// kept busy: every prefix of the dispatch order stays within the
    /// bound.
    #[test]
    fn every_prefix_of_the_dispatch_order_is_within_the_bound(
        weights in proptest::collection::vec(1u64..6, 2..4),
        submissions in proptest::collection::vec((0usize..4, 0u8..3), 1..120),
        slots in 1u32..5,
    ) {
        let mut s = scheduler();
        let names: Vec<String> = (0..weights.len()).map(|i| format!("t{i}")).collect();
        for (name, w) in names.iter().zip(&weights) {
            s.set_weight(name.parse().unwrap(), *w as u32);
        }
        let (_, _) = worker(&mut s, slots);
        let mut running = std::collections::VecDeque::new();
        for _ in 0..slots {
            running.extend(assigns(&s.submit(job("filler", 0)).unwrap()));
        }
        prop_assert_eq!(running.len(), slots as usize);
        let mut owner = HashMap::new();
        for (t, prio) in submissions {
            let t = t % weights.len();
            let j = job(&names[t], prio);
            owner.insert(j.id, t);
            prop_assert!(assigns(&s.submit(j).unwrap()).is_empty());
        }
        let order = drain(&mut s, running);
        prop_assert_eq!(order.len(), owner.len());
        assert_prefixes_fair(&order, &owner, &weights);
    }
}

fn depths(s: &Scheduler<ManualClock>) -> BTreeMap<(String, u8), usize> {
    s.queue_depths()
        .into_iter()
        .map(|(t, p, n)| ((t.to_string(), p), n))
        .collect()
}

/// Queue depth is the number of jobs waiting for a worker, per tenant and
/// priority, at every backlog size: two jobs, five, after dispatches, after
/// a cancel, and for jobs no worker can run yet.
#[test]
fn queue_depth_counts_every_job_waiting_for_a_worker() {
    let mut s = scheduler();
    assert!(depths(&s).is_empty());
    let (_, _) = worker(&mut s, 1);
    let running = assigns(&s.submit(job("acme", 1)).unwrap());
    assert_eq!(running.len(), 1);
    assert!(depths(&s).is_empty(), "a running job is not waiting");
    let a: Vec<JobRequest> = (0..2).map(|_| job("acme", 3)).collect();
    for j in &a {
        s.submit(j.clone()).unwrap();
    }
    assert_eq!(depths(&s), BTreeMap::from([(("acme".into(), 3), 2)]));
    let b: Vec<JobRequest> = (0..5).map(|_| job("globex", 0)).collect();
    for j in &b {
        s.submit(j.clone()).unwrap();
    }
    assert_eq!(
        depths(&s),
        BTreeMap::from([(("acme".into(), 3), 2), (("globex".into(), 0), 5)])
    );
    s.cancel(b[0].id).unwrap();
    assert_eq!(depths(&s)[&("globex".into(), 0)], 4);
    // A job too large for any worker waits for a worker too.
    let mut huge = job("acme", 3);
    huge.resources = Resources::new(64_000, 1, 0);
    s.submit(huge).unwrap();
    assert_eq!(depths(&s)[&("acme".into(), 3)], 3);
    let order = drain(&mut s, running.into());
    assert_eq!(order.len(), 6);
    assert_eq!(depths(&s), BTreeMap::from([(("acme".into(), 3), 1)]));
    let total: usize = s.queue_depths().iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, 1);
    let _: Option<TenantId> = None;
}
