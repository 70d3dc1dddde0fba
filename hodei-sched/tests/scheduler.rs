//! The Scheduler on virtual time: placement, retries, dependencies, cancel,
//! lost workers, large jobs, quotas, timeouts and fairness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::assigns;
use hodei_core::{
    Backoff, Clock, Constraint, ExitStatus, JobId, JobSpec, JobState, ManualClock, Resources,
    RetryPolicy, TenantId, Timestamp, Transition, WorkerId,
};
use hodei_sched::{
    Action, AttemptOutcome, ClusterConfig, ClusterState, JobRequest, SchedError, Scheduler,
    SchedulerConfig, Telemetry, WorkerSpec,
};

struct Harness {
    clock: ManualClock,
    sched: Scheduler<ManualClock>,
}

fn harness(config: SchedulerConfig) -> Harness {
    let clock = ManualClock::new(Timestamp(1_000_000));
    let cluster = Arc::new(ClusterState::new({
        let mut c = ClusterConfig::default();
        c.heartbeat_timeout = Duration::from_secs(10);
        c
    }));
    let sched = Scheduler::new(config, cluster, clock.clone());
    Harness { clock, sched }
}

fn worker(
    h: &mut Harness,
    id: u128,
    cpu: u32,
    mem: u64,
    labels: &[(&str, &str)],
) -> (WorkerId, Vec<Action>) {
    let id = WorkerId::from_u128(id);
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let actions = h
        .sched
        .worker_joined(WorkerSpec {
            id,
            labels,
            capacity: Resources::new(cpu, mem, 0),
        })
        .unwrap();
    (id, actions)
}

fn job(tenant: &str, cpu: u32, mem: u64) -> JobRequest {
    let mut spec = JobSpec::argv(["true"]);
    spec.tenant = tenant.parse().unwrap();
    spec.resources = Resources::new(cpu, mem, 0);
    JobRequest::from_spec(JobId::new(), &spec)
}

/// The worker starts then ends an attempt.
fn run_to_end(
    h: &mut Harness,
    w: WorkerId,
    id: JobId,
    attempt: u32,
    outcome: AttemptOutcome,
) -> Vec<Action> {
    h.sched.job_started(w, id, attempt).unwrap();
    h.sched.job_finished(w, id, attempt, outcome).unwrap()
}

#[test]
fn every_assign_follows_its_changed_action() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 4000, 4000, &[]);
    let j = job("acme", 100, 100);
    let id = j.id;
    let actions = h.sched.submit(j).unwrap();
    assert_eq!(
        actions,
        vec![
            Action::Changed {
                job: id,
                from: JobState::Queued,
                to: JobState::Assigned {
                    worker: w,
                    attempt: 1
                },
                attempt: 1,
                cause: Transition::Assign { worker: w },
            },
            Action::Assign {
                job: id,
                worker: w,
                attempt: 1
            },
        ]
    );
    h.sched.job_started(w, id, 1).unwrap();
    h.sched
        .job_finished(w, id, 1, AttemptOutcome::Succeeded)
        .unwrap();
    assert!(h.sched.lifecycle(id).is_none(), "finished jobs are retired");
    assert_eq!(
        h.sched.cluster().worker(w).unwrap().allocated,
        Resources::ZERO
    );
}

#[test]
fn jobs_wait_for_capacity_and_start_when_it_frees() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 1000, 1000, &[]);
    let a = job("acme", 1000, 100);
    let b = job("acme", 1000, 100);
    let (aid, bid) = (a.id, b.id);
    assert_eq!(assigns(&h.sched.submit(a).unwrap()).len(), 1);
    assert!(assigns(&h.sched.submit(b).unwrap()).is_empty());
    assert_eq!(h.sched.stats().blocked, 1);
    let actions = run_to_end(&mut h, w, aid, 1, AttemptOutcome::Succeeded);
    assert_eq!(assigns(&actions), vec![(bid, w, 1)]);
}

#[test]
fn failures_retry_after_backoff_with_a_new_attempt() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 4000, 4000, &[]);
    let mut j = job("acme", 100, 100);
    j.retry = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            multiplier: 2.0,
        },
        jitter: 0.0,
    };
    let id = j.id;
    h.sched.submit(j).unwrap();
    h.sched.job_started(w, id, 1).unwrap();
    let a = h
        .sched
        .job_finished(w, id, 1, AttemptOutcome::Failed(ExitStatus::Code(1)))
        .unwrap();
    assert!(assigns(&a).is_empty());
    assert_eq!(h.sched.stats().retrying, 1);
    assert_eq!(
        h.sched.next_deadline(),
        Some(h.clock.now() + Duration::from_secs(2))
    );
    h.clock.advance(Duration::from_millis(1_999));
    assert!(assigns(&h.sched.tick()).is_empty());
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(assigns(&h.sched.tick()), vec![(id, w, 2)]);
    // A report about attempt 1 is refused now.
    assert!(matches!(
        h.sched.job_started(w, id, 1),
        Err(SchedError::Transition(_))
    ));
    h.sched.job_started(w, id, 2).unwrap();
    h.sched
        .job_finished(w, id, 2, AttemptOutcome::TimedOut)
        .unwrap();
    h.clock.advance(Duration::from_secs(4));
    assert_eq!(assigns(&h.sched.tick()), vec![(id, w, 3)]);
    h.sched.job_started(w, id, 3).unwrap();
    let last = h
        .sched
        .job_finished(w, id, 3, AttemptOutcome::Failed(ExitStatus::Signal(9)))
        .unwrap();
    assert!(last.iter().any(|a| matches!(
        a,
        Action::Changed {
            to: JobState::Failed { .. },
            ..
        }
    )));
    assert!(h.sched.lifecycle(id).is_none(), "no attempts left: retired");
    assert_eq!(
        h.sched.next_deadline().map(|t| t > h.clock.now()),
        Some(true)
    );
}

#[test]
fn a_lost_worker_s_jobs_retry_on_another_worker() {
    let mut h = harness(SchedulerConfig::default());
    let (w1, _) = worker(&mut h, 1, 1000, 1000, &[]);
    let mut j = job("acme", 800, 100);
    j.retry.max_attempts = 2;
    j.retry.jitter = 0.0;
    j.retry.backoff.initial = Duration::from_secs(1);
    let id = j.id;
    assert_eq!(assigns(&h.sched.submit(j).unwrap()), vec![(id, w1, 1)]);
    h.sched.job_started(w1, id, 1).unwrap();
    let (w2, _) = worker(&mut h, 2, 1000, 1000, &[]);
    // w1 falls silent; w2 keeps heartbeating.
    for _ in 0..11 {
        h.clock.advance(Duration::from_secs(1));
        h.sched
            .cluster()
            .heartbeat(w2, Telemetry::default(), h.clock.now())
            .unwrap();
        h.sched.tick();
    }
    assert_eq!(h.sched.lifecycle(id).unwrap().state, JobState::Lost);
    h.clock.advance(Duration::from_secs(1));
    h.sched
        .cluster()
        .heartbeat(w2, Telemetry::default(), h.clock.now())
        .unwrap();
    assert_eq!(assigns(&h.sched.tick()), vec![(id, w2, 2)]);
}

#[test]
fn dependencies_release_on_success_and_cascade_on_failure() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 4000, 4000, &[]);
    let build = job("acme", 100, 100);
    let mut test = job("acme", 100, 100);
    test.dependencies = vec![build.id];
    let mut deploy = job("acme", 100, 100);
    deploy.dependencies = vec![test.id];
    let (b, t, d) = (build.id, test.id, deploy.id);
    h.sched.submit(build).unwrap();
    h.sched.submit(test).unwrap();
    h.sched.submit(deploy).unwrap();
    assert_eq!(h.sched.lifecycle(t).unwrap().state, JobState::Pending);
    let a = run_to_end(&mut h, w, b, 1, AttemptOutcome::Succeeded);
    assert_eq!(assigns(&a), vec![(t, w, 1)]);
    let a = run_to_end(&mut h, w, t, 1, AttemptOutcome::Failed(ExitStatus::Code(2)));
    assert!(a.contains(&Action::Changed {
        job: d,
        from: JobState::Pending,
        to: JobState::Cancelled,
        attempt: 1,
        cause: Transition::Cancel,
    }));
    assert!(h.sched.lifecycle(d).is_none());
    // Later jobs may depend on finished ones; unknown ids are refused.
    let mut after = job("acme", 100, 100);
    after.dependencies = vec![b];
    assert_eq!(assigns(&h.sched.submit(after).unwrap()).len(), 1);
    let mut orphan = job("acme", 100, 100);
    orphan.dependencies = vec![JobId::new()];
    assert!(matches!(
        h.sched.submit(orphan),
        Err(SchedError::UnknownDependency { .. })
    ));
}

#[test]
fn cancelling_a_running_job_stops_it_and_holds_capacity_until_confirmed() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 1000, 1000, &[]);
    let a = job("acme", 1000, 100);
    let b = job("acme", 1000, 100);
    let (aid, bid) = (a.id, b.id);
    h.sched.submit(a).unwrap();
    h.sched.submit(b).unwrap();
    h.sched.job_started(w, aid, 1).unwrap();
    let actions = h.sched.cancel(aid).unwrap();
    assert!(actions.contains(&Action::Stop {
        job: aid,
        worker: w,
        attempt: 1
    }));
    assert!(
        assigns(&actions).is_empty(),
        "capacity is held until the worker confirms"
    );
    let actions = h
        .sched
        .job_finished(w, aid, 1, AttemptOutcome::Failed(ExitStatus::Signal(15)))
        .unwrap();
    assert_eq!(assigns(&actions), vec![(bid, w, 1)]);
    // Cancelling a queued job ends it at once.
    let c = job("acme", 1000, 100);
    let cid = c.id;
    h.sched.submit(c).unwrap();
    h.sched.cancel(cid).unwrap();
    assert!(h.sched.lifecycle(cid).is_none());
    assert!(matches!(
        h.sched.cancel(cid),
        Err(SchedError::UnknownJob(_))
    ));
}

#[test]
fn a_large_job_is_not_starved_and_does_not_block_small_ones() {
    let mut h = harness(SchedulerConfig::default());
    let (w1, _) = worker(&mut h, 1, 4000, 4000, &[]);
    let (w2, _) = worker(&mut h, 2, 4000, 4000, &[]);
    // Both workers are mostly busy (two fillers cannot share a worker).
    let filler1 = job("acme", 3000, 3000);
    let filler2 = job("acme", 3000, 3000);
    let a = h.sched.submit(filler1).unwrap();
    let b = h.sched.submit(filler2).unwrap();
    let placed: Vec<_> = assigns(&a).into_iter().chain(assigns(&b)).collect();
    assert_eq!(placed.len(), 2);
    assert_ne!(placed[0].1, placed[1].1);
    // A job needing a whole worker cannot start now.
    let big = job("acme", 4000, 4000);
    let big_id = big.id;
    assert!(assigns(&h.sched.submit(big).unwrap()).is_empty());
    assert_eq!(h.sched.stats().blocked, 1);
    // Small jobs behind it still run (backfill), but only on the worker
    // not held for the big one.
    let mut small = Vec::new();
    for _ in 0..3 {
        let s = job("acme", 500, 500);
        small.push(s.id);
        let placed_now = assigns(&h.sched.submit(s).unwrap());
        for (_, w, _) in &placed_now {
            assert_eq!(*w, placed_now[0].1);
        }
    }
    let stats = h.sched.stats();
    assert_eq!(
        stats.blocked, 2,
        "the third small job waits behind the big one: {stats:?}"
    );
    let small_worker = h
        .sched
        .cluster()
        .workers()
        .into_iter()
        .find(|w| w.jobs.contains(&small[0]))
        .unwrap()
        .id;
    assert!(
        h.sched
            .cluster()
            .worker(small_worker)
            .unwrap()
            .jobs
            .contains(&small[1])
    );
    let reserved = if small_worker == w1 { w2 } else { w1 };
    // When the held worker's filler finishes, the big job starts there,
    // before the small job that waited behind it.
    let filler_on_reserved = placed.iter().find(|(_, w, _)| *w == reserved).unwrap().0;
    let actions = run_to_end(
        &mut h,
        reserved,
        filler_on_reserved,
        1,
        AttemptOutcome::Succeeded,
    );
    assert_eq!(assigns(&actions), vec![(big_id, reserved, 1)]);
    // Then the small one runs when the other worker frees.
    let actions = run_to_end(&mut h, small_worker, small[0], 1, AttemptOutcome::Succeeded);
    assert_eq!(assigns(&actions), vec![(small[2], small_worker, 1)]);
}

#[test]
fn jobs_no_worker_can_run_wait_for_new_workers() {
    let mut h = harness(SchedulerConfig::default());
    worker(&mut h, 1, 1000, 1000, &[("zone", "eu")]);
    let mut gpu = job("acme", 100, 100);
    gpu.constraints = vec![Constraint::is_in("zone", &["us"])];
    let id = gpu.id;
    assert!(assigns(&h.sched.submit(gpu).unwrap()).is_empty());
    assert_eq!(h.sched.stats().unplaceable, 1);
    assert_eq!(
        h.sched.stats().blocked,
        0,
        "it does not occupy the backfill window"
    );
    assert_eq!(
        h.sched.explain(id).map(|r| r.to_string()),
        Some("no worker has labels matching the constraints".to_string())
    );
    let (us, actions) = worker(&mut h, 2, 1000, 1000, &[("zone", "us")]);
    assert_eq!(assigns(&actions), vec![(id, us, 1)]);
}

#[test]
fn quotas_hold_back_one_tenant_without_blocking_others() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 8000, 8000, &[]);
    let acme: TenantId = "acme".parse().unwrap();
    h.sched
        .set_quota(acme.clone(), Some(Resources::new(1000, 1000, 0)));
    let a1 = job("acme", 1000, 100);
    let a2 = job("acme", 1000, 100);
    let other = job("globex", 1000, 100);
    let (a1id, a2id, oid) = (a1.id, a2.id, other.id);
    assert_eq!(assigns(&h.sched.submit(a1).unwrap()).len(), 1);
    assert!(assigns(&h.sched.submit(a2).unwrap()).is_empty());
    assert_eq!(h.sched.stats().over_quota, 1);
    assert_eq!(assigns(&h.sched.submit(other).unwrap()), vec![(oid, w, 1)]);
    let a = run_to_end(&mut h, w, a1id, 1, AttemptOutcome::Succeeded);
    assert_eq!(assigns(&a), vec![(a2id, w, 1)]);
}

#[test]
fn the_scheduler_ends_an_attempt_its_worker_never_reports() {
    let mut h = harness({
        let mut c = SchedulerConfig::default();
        c.timeout_grace = Duration::from_secs(5);
        c
    });
    let (w, _) = worker(&mut h, 1, 1000, 1000, &[]);
    let mut j = job("acme", 100, 100);
    j.timeout = Some(Duration::from_secs(30));
    let id = j.id;
    h.sched.submit(j).unwrap();
    h.sched.job_started(w, id, 1).unwrap();
    h.clock.advance(Duration::from_secs(34));
    h.sched
        .cluster()
        .heartbeat(w, Telemetry::default(), h.clock.now())
        .unwrap();
    assert!(h.sched.tick().is_empty());
    h.clock.advance(Duration::from_secs(1));
    h.sched
        .cluster()
        .heartbeat(w, Telemetry::default(), h.clock.now())
        .unwrap();
    let actions = h.sched.tick();
    assert!(actions.contains(&Action::Stop {
        job: id,
        worker: w,
        attempt: 1
    }));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Changed {
            to: JobState::TimedOut,
            ..
        }
    )));
}

#[test]
fn recovered_running_jobs_wait_for_reattach_then_are_lost() {
    let mut h = harness({
        let mut c = SchedulerConfig::default();
        c.reattach_grace = Duration::from_secs(20);
        c
    });
    let w = WorkerId::from_u128(1);
    let mut a = job("acme", 100, 100);
    a.retry.max_attempts = 1;
    let b = job("acme", 100, 100);
    let (aid, bid) = (a.id, b.id);
    let running = |id| hodei_core::Lifecycle {
        id,
        state: JobState::Running {
            worker: w,
            attempt: 1,
        },
        attempt: 1,
        max_attempts: 1,
    };
    h.sched.adopt(a, running(aid)).unwrap();
    h.sched.adopt(b, running(bid)).unwrap();
    worker(&mut h, 1, 1000, 1000, &[]);
    h.sched.reattach(w, aid, 1).unwrap();
    assert!(h.sched.reattach(w, aid, 2).is_err());
    h.clock.advance(Duration::from_secs(21));
    h.sched
        .cluster()
        .heartbeat(w, Telemetry::default(), h.clock.now())
        .unwrap();
    let actions = h.sched.tick();
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::Changed { job, to: JobState::Lost, .. } if *job == bid))
    );
    assert_eq!(
        h.sched.lifecycle(aid).unwrap().state,
        JobState::Running {
            worker: w,
            attempt: 1
        }
    );
    assert_eq!(h.sched.cluster().worker(w).unwrap().jobs, vec![aid]);
}

/// Tenants one, two and four, weighted 1:2:4, each with 1000 jobs.
fn weighted_backlog(
    h: &mut Harness,
) -> (
    std::collections::HashMap<JobId, &'static str>,
    Vec<JobRequest>,
) {
    for (t, weight) in [("one", 1), ("two", 2), ("four", 4)] {
        h.sched.set_weight(t.parse().unwrap(), weight);
    }
    let mut owner = std::collections::HashMap::new();
    let mut reqs = Vec::new();
    for t in ["one", "two", "four"] {
        for _ in 0..1000 {
            let j = job(t, 1000, 1);
            owner.insert(j.id, t);
            reqs.push(j);
        }
    }
    (owner, reqs)
}

/// 700 dispatches split 1:2:4 within ±2%.
fn assert_split_1_2_4(
    placed: &[(JobId, WorkerId, u32)],
    owner: &std::collections::HashMap<JobId, &'static str>,
) {
    let count = |t: &str| placed.iter().filter(|(j, _, _)| owner[j] == t).count();
    assert!((98..=102).contains(&count("one")), "one: {}", count("one"));
    assert!((196..=204).contains(&count("two")), "two: {}", count("two"));
    assert!(
        (392..=408).contains(&count("four")),
        "four: {}",
        count("four")
    );
}

#[test]
fn tenants_share_dispatches_by_weight() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 1_000_000, 1_000_000, &[]);
    // Capacity for 700 jobs; each tenant submits 1000.
    let cluster = h.sched.cluster().clone();
    cluster.drain(w).unwrap();
    let (owner, reqs) = weighted_backlog(&mut h);
    let (_, refused) = h.sched.submit_many(reqs);
    assert!(refused.is_empty());
    let (w2, actions) = worker(&mut h, 2, 700_000, 1_000_000, &[]);
    let placed = assigns(&actions);
    assert_eq!(placed.len(), 700);
    assert!(placed.iter().all(|(_, w, _)| *w == w2));
    assert_split_1_2_4(&placed, &owner);
}

/// The scheduler publishes nothing itself: a host publishes each change
/// once it is stored. Each change comes back as an action, before the
/// assignment that depends on it.
#[test]
fn state_changes_come_back_as_actions_before_their_assignment() {
    let clock = ManualClock::new(Timestamp(5));
    let mut sched = Scheduler::new(
        SchedulerConfig::default(),
        Arc::new(ClusterState::default()),
        clock,
    );
    let w = WorkerId::new();
    sched
        .worker_joined(WorkerSpec {
            id: w,
            labels: Default::default(),
            capacity: Resources::new(1000, 1000, 0),
        })
        .unwrap();
    let j = job("acme", 100, 100);
    let id = j.id;
    let actions = sched.submit(j).unwrap();
    let assigned = JobState::Assigned {
        worker: w,
        attempt: 1,
    };
    assert_eq!(
        actions,
        vec![
            Action::Changed {
                job: id,
                from: JobState::Queued,
                to: assigned,
                attempt: 1,
                cause: Transition::Assign { worker: w },
            },
            Action::Assign {
                job: id,
                worker: w,
                attempt: 1
            },
        ]
    );
}

#[test]
fn a_cancelled_queued_job_never_runs_even_when_its_slot_is_reused() {
    let mut h = harness({
        let mut c = SchedulerConfig::default();
        c.backfill_window = 1;
        c
    });
    let (w, _) = worker(&mut h, 1, 1000, 1000, &[]);
    let a = job("acme", 1000, 100);
    let b = job("acme", 1000, 100);
    let c = job("acme", 1000, 100);
    let (aid, bid, cid) = (a.id, b.id, c.id);
    h.sched.submit(a).unwrap();
    h.sched.submit(b).unwrap(); // waits in the one-job window
    h.sched.submit(c).unwrap(); // stays in the fair queue
    h.sched.cancel(cid).unwrap();
    let d = job("acme", 1000, 100);
    let did = d.id;
    h.sched.submit(d).unwrap(); // takes the cancelled job's slot
    let mut ran = Vec::new();
    for (id, next) in [(aid, bid), (bid, did)] {
        let actions = run_to_end(&mut h, w, id, 1, AttemptOutcome::Succeeded);
        let placed = assigns(&actions);
        assert_eq!(placed, vec![(next, w, 1)]);
        ran.extend(placed.into_iter().map(|p| p.0));
    }
    assert!(!ran.contains(&cid));
    assert_eq!(h.sched.stats().tracked, 1);
}

#[test]
fn cancelling_a_job_in_backoff_ends_its_wait() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 1000, 1000, &[]);
    let mut j = job("acme", 100, 100);
    j.retry.max_attempts = 3;
    j.retry.backoff.initial = Duration::from_secs(5);
    let id = j.id;
    h.sched.submit(j).unwrap();
    run_to_end(
        &mut h,
        w,
        id,
        1,
        AttemptOutcome::Failed(ExitStatus::Code(1)),
    );
    assert_eq!(h.sched.stats().retrying, 1);
    h.sched.cancel(id).unwrap();
    assert_eq!(h.sched.stats().retrying, 0);
    assert_eq!(h.sched.stats().tracked, 0);
    // The backoff timer firing later finds nothing to retry.
    h.clock.advance(Duration::from_secs(10));
    h.sched
        .cluster()
        .heartbeat(w, Telemetry::default(), h.clock.now())
        .unwrap();
    assert!(assigns(&h.sched.tick()).is_empty());
}

#[test]
fn a_rejoining_worker_that_does_not_hold_its_jobs_gives_them_back() {
    let mut h = harness(SchedulerConfig::default());
    let w = WorkerId::from_u128(7);
    let (never_reached, ran) = (job("acme", 100, 100), job("acme", 100, 100));
    let (nid, rid) = (never_reached.id, ran.id);
    let life = |id, state| hodei_core::Lifecycle {
        id,
        state,
        attempt: 1,
        max_attempts: 1,
    };
    h.sched
        .adopt(
            never_reached,
            life(
                nid,
                JobState::Assigned {
                    worker: w,
                    attempt: 1,
                },
            ),
        )
        .unwrap();
    h.sched
        .adopt(
            ran,
            life(
                rid,
                JobState::Running {
                    worker: w,
                    attempt: 1,
                },
            ),
        )
        .unwrap();
    let spec = hodei_sched::WorkerSpec {
        id: w,
        labels: Default::default(),
        capacity: Resources::new(1000, 1000, 0),
    };
    // `w` comes back holding nothing.
    let (actions, refused) = h.sched.worker_rejoined(spec, &[]).unwrap();
    assert!(refused.is_empty());
    // The one that ran is Lost (no attempts left: it ends there).
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Changed { job, to: JobState::Lost, .. } if *job == rid))
    );
    // The one that never reached it is queued again and placed, attempt 1.
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Changed { job, to: JobState::Queued, cause: hodei_core::Transition::Requeue { attempt: 1 }, .. } if *job == nid
    )));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Assign { job, attempt: 1, .. } if *job == nid))
    );
}

#[test]
fn a_backlog_built_with_no_workers_is_still_shared_by_weight() {
    let mut h = harness(SchedulerConfig::default());
    let (owner, reqs) = weighted_backlog(&mut h);
    // Nothing to run on yet: every job waits. One at a time, as a server
    // admits them.
    for r in reqs {
        assert!(assigns(&h.sched.submit(r).unwrap()).is_empty());
    }
    let (_, actions) = worker(&mut h, 2, 700_000, 1_000_000, &[]);
    let placed = assigns(&actions);
    assert_eq!(placed.len(), 700);
    assert_split_1_2_4(&placed, &owner);
}

fn keyed(tenant: &str, key: &str, limit: u32) -> JobRequest {
    let mut j = job(tenant, 100, 100);
    j.concurrency = Some(hodei_core::ConcurrencyLimit {
        key: key.into(),
        limit,
    });
    j
}

/// One deploy per environment, whoever submits: jobs sharing a key run
/// one at a time across tenants, each tenant's in the order submitted,
/// while a long line of them holds up no other job.
#[test]
fn a_concurrency_key_is_shared_across_tenants_and_blocks_nothing_else() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 100_000, 100_000, &[]);
    let mut line = Vec::new();
    let mut placed = Vec::new();
    for i in 0..200 {
        let j = keyed(if i % 2 == 0 { "acme" } else { "globex" }, "deploy-prod", 1);
        line.push(j.id);
        placed.extend(assigns(&h.sched.submit(j).unwrap()));
    }
    assert_eq!(placed.len(), 1, "one job of the key at a time");
    assert_eq!(h.sched.stats().over_concurrency, 199);
    // Another key and a job with none are placed at once.
    let other = keyed("acme", "deploy-staging", 2);
    let free = job("globex", 100, 100);
    let (o, f) = (other.id, free.id);
    assert_eq!(assigns(&h.sched.submit(other).unwrap()).len(), 1, "{o}");
    assert_eq!(assigns(&h.sched.submit(free).unwrap()).len(), 1, "{f}");
    // Each end lets exactly the next one in, in order.
    let mut order = vec![placed[0].0];
    let mut current = placed[0];
    for _ in 0..199 {
        let next = assigns(&run_to_end(
            &mut h,
            w,
            current.0,
            current.2,
            AttemptOutcome::Succeeded,
        ));
        assert_eq!(next.len(), 1);
        current = next[0];
        order.push(current.0);
    }
    let mut all = order.clone();
    all.sort();
    let mut want = line.clone();
    want.sort();
    assert!(all == want, "every job of the key ran once");
    for parity in 0..2 {
        let theirs: Vec<JobId> = line.iter().skip(parity).step_by(2).copied().collect();
        let ran: Vec<JobId> = order
            .iter()
            .filter(|j| theirs.contains(j))
            .copied()
            .collect();
        assert!(ran == theirs, "a tenant's jobs of the key ran out of order");
    }
    assert_eq!(h.sched.stats().over_concurrency, 0);
}

/// A cancelled holder keeps its slot until its worker confirms the stop;
/// a cancelled waiter gives up its place to the next.
#[test]
fn a_stopping_holder_keeps_its_key_until_confirmed() {
    let mut h = harness(SchedulerConfig::default());
    let (w, _) = worker(&mut h, 1, 100_000, 100_000, &[]);
    let a = keyed("acme", "k", 1);
    let b = keyed("acme", "k", 1);
    let c = keyed("acme", "k", 1);
    let (ai, bi, ci) = (a.id, b.id, c.id);
    let first = assigns(&h.sched.submit(a).unwrap());
    assert_eq!(first.len(), 1);
    h.sched.submit(b).unwrap();
    h.sched.submit(c).unwrap();
    // The waiter b is cancelled: c is next in line.
    h.sched.cancel(bi).unwrap();
    h.sched.job_started(w, ai, first[0].2).unwrap();
    let stop = h.sched.cancel(ai).unwrap();
    assert!(stop.iter().any(|x| matches!(x, Action::Stop { .. })));
    assert!(assigns(&stop).is_empty(), "a stopping holder still holds");
    let next = assigns(
        &h.sched
            .job_finished(
                w,
                ai,
                first[0].2,
                AttemptOutcome::Failed(ExitStatus::Signal(15)),
            )
            .unwrap(),
    );
    assert_eq!(next.iter().map(|x| x.0).collect::<Vec<_>>(), vec![ci]);
}
