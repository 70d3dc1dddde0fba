//! ClusterState: reservations, liveness, and placement against a model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hodei_core::{Constraint, ConstraintOp, JobId, Resources, Timestamp, WorkerId};
use hodei_sched::{
    ClusterConfig, ClusterError, ClusterState, PlacementRequest, Policy, Rejection, Telemetry,
    WorkerSpec, WorkerStatus,
};
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spec(id: u128, cpu: u32, mem: u64, l: &[(&str, &str)]) -> WorkerSpec {
    WorkerSpec {
        id: WorkerId::from_u128(id),
        labels: labels(l),
        capacity: Resources::new(cpu, mem, 0),
    }
}

fn req(res: Resources, constraints: &[Constraint], policy: Policy) -> PlacementRequest<'_> {
    PlacementRequest {
        resources: res,
        constraints,
        policy,
        exclude: None,
        now: Timestamp(0),
    }
}

#[test]
fn reservations_never_over_commit_under_contention() {
    let cluster = ClusterState::default();
    for w in 0..4 {
        cluster
            .register(spec(w, 10_000, 10_000, &[]), Timestamp(0))
            .unwrap();
    }
    let granted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for i in 0..2_000u32 {
                    let w = WorkerId::from_u128((i % 4) as u128);
                    let job = JobId::new();
                    if cluster.reserve(w, job, Resources::new(100, 100, 0)).is_ok() {
                        granted.fetch_add(1, Ordering::Relaxed);
                        if i % 3 == 0 {
                            assert!(cluster.release(w, job).is_some());
                            granted.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let mut held = 0;
    for w in cluster.workers() {
        assert!(w.allocated.fits(&w.capacity), "over-committed: {w:?}");
        assert_eq!(w.allocated.cpu_millis as usize, w.jobs.len() * 100);
        held += w.jobs.len();
    }
    assert_eq!(held, granted.load(Ordering::Relaxed));
    // 4 workers x 100 slots: every slot ended up taken.
    assert_eq!(held, 400);
}

#[test]
fn release_is_idempotent_and_reserve_refuses_what_does_not_fit() {
    let c = ClusterState::default();
    c.register(spec(1, 1000, 1000, &[]), Timestamp(0)).unwrap();
    let w = WorkerId::from_u128(1);
    let j = JobId::new();
    c.reserve(w, j, Resources::new(600, 100, 0)).unwrap();
    assert!(matches!(
        c.reserve(w, j, Resources::new(1, 1, 0)),
        Err(ClusterError::AlreadyReserved { .. })
    ));
    assert!(matches!(
        c.reserve(w, JobId::new(), Resources::new(600, 100, 0)),
        Err(ClusterError::Insufficient { .. })
    ));
    assert_eq!(c.release(w, j), Some(Resources::new(600, 100, 0)));
    assert_eq!(c.release(w, j), None);
    assert!(matches!(
        c.reserve(WorkerId::from_u128(9), j, Resources::new(1, 1, 0)),
        Err(ClusterError::UnknownWorker(_))
    ));
}

#[test]
fn silent_workers_are_lost_with_their_jobs() {
    let c = ClusterState::new({
        let mut c = ClusterConfig::default();
        c.heartbeat_timeout = Duration::from_secs(10);
        c
    });
    c.register(spec(1, 1000, 1000, &[]), Timestamp(0)).unwrap();
    c.register(spec(2, 1000, 1000, &[]), Timestamp(0)).unwrap();
    let (a, b) = (WorkerId::from_u128(1), WorkerId::from_u128(2));
    let job = JobId::new();
    c.reserve(a, job, Resources::new(100, 100, 0)).unwrap();
    assert_eq!(c.next_expiry(), Some(Timestamp(10_001)));
    c.heartbeat(
        b,
        Telemetry {
            cpu_percent: 12.5,
            memory_used_mb: 300,
            load_1m: 0.5,
        },
        Timestamp(8_000),
    )
    .unwrap();
    assert!(c.expire(Timestamp(10_000)).is_empty());
    let lost = c.expire(Timestamp(10_001));
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].id, lost[0].jobs.clone()), (a, vec![job]));
    assert_eq!(c.status(a), Some(WorkerStatus::Lost));
    assert_eq!(c.worker(a).unwrap().allocated, Resources::ZERO);
    assert!(matches!(
        c.heartbeat(a, Telemetry::default(), Timestamp(10_002)),
        Err(ClusterError::WorkerLost(_))
    ));
    let snap = c.worker(b).unwrap();
    assert_eq!(snap.telemetry.memory_used_mb, 300);
    assert!((snap.telemetry.cpu_percent - 12.5).abs() < 0.11);
    // A lost worker is not placed on; re-registering brings it back.
    let r = req(Resources::new(100, 100, 0), &[], Policy::Spread);
    assert_eq!(
        c.place(&PlacementRequest {
            now: Timestamp(10_001),
            ..r
        }),
        Some(b)
    );
    c.register(spec(1, 1000, 1000, &[]), Timestamp(10_005))
        .unwrap();
    assert_eq!(c.status(a), Some(WorkerStatus::Ready));
}

#[test]
fn draining_workers_take_nothing_new() {
    let c = ClusterState::default();
    c.register(spec(1, 1000, 1000, &[]), Timestamp(0)).unwrap();
    c.drain(WorkerId::from_u128(1)).unwrap();
    let r = req(Resources::new(1, 1, 0), &[], Policy::BinPack);
    assert_eq!(c.place(&r), None);
    assert_eq!(c.explain(&r), Some(Rejection::NoneReady));
    assert!(matches!(
        c.reserve(
            WorkerId::from_u128(1),
            JobId::new(),
            Resources::new(1, 1, 0)
        ),
        Err(ClusterError::NotReady(_))
    ));
}

#[test]
fn rejections_say_why() {
    let c = ClusterState::default();
    let small = Resources::new(100, 100, 0);
    assert_eq!(
        c.explain(&req(small, &[], Policy::BinPack)),
        Some(Rejection::NoWorkers)
    );
    c.register(spec(1, 1000, 1000, &[("zone", "eu")]), Timestamp(0))
        .unwrap();
    let us = [Constraint::is_in("zone", &["us"])];
    assert_eq!(
        c.explain(&req(small, &us, Policy::BinPack)),
        Some(Rejection::NoMatchingLabels)
    );
    let huge = Resources::new(64_000, 100, 0);
    assert!(matches!(
        c.explain(&req(huge, &[], Policy::BinPack)),
        Some(Rejection::TooLarge { .. })
    ));
    c.reserve(
        WorkerId::from_u128(1),
        JobId::new(),
        Resources::new(950, 10, 0),
    )
    .unwrap();
    assert_eq!(
        c.explain(&req(small, &[], Policy::BinPack)),
        Some(Rejection::NoFreeCapacity)
    );
    assert_eq!(
        c.explain(&req(Resources::new(10, 10, 0), &[], Policy::BinPack)),
        None
    );
}

#[test]
fn bin_pack_fills_and_spread_spreads() {
    let c = ClusterState::default();
    for w in 1..=3 {
        c.register(spec(w, 4000, 4000, &[]), Timestamp(0)).unwrap();
    }
    c.reserve(
        WorkerId::from_u128(2),
        JobId::new(),
        Resources::new(1000, 1000, 0),
    )
    .unwrap();
    let r = Resources::new(500, 500, 0);
    assert_eq!(
        c.place(&req(r, &[], Policy::BinPack)),
        Some(WorkerId::from_u128(2))
    );
    let spread = c.place(&req(r, &[], Policy::Spread)).unwrap();
    assert_ne!(spread, WorkerId::from_u128(2));
}

fn constraint() -> impl Strategy<Value = Constraint> {
    let key = prop_oneof![Just("zone"), Just("gpu"), Just("arch")];
    let val = prop_oneof![Just("a"), Just("b"), Just("c")];
    (key, 0..4u8, proptest::collection::vec(val, 1..3)).prop_map(|(k, op, vals)| {
        let (op, values) = match op {
            0 => (ConstraintOp::In, vals),
            1 => (ConstraintOp::NotIn, vals),
            2 => (ConstraintOp::Exists, vec![]),
            _ => (ConstraintOp::NotExists, vec![]),
        };
        Constraint {
            key: k.into(),
            op,
            values: values.into_iter().map(String::from).collect(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The indexed placement chooses exactly what a scan of every worker
    /// chooses, through reservations, releases, drains and losses.
    #[test]
    fn indexed_placement_matches_a_full_scan(
        workers in proptest::collection::vec(
            (1u32..8, 1u64..8, proptest::collection::vec((0..3usize, 0..3usize), 0..3)),
            1..40,
        ),
        ops in proptest::collection::vec((0u8..4, 1u32..4, 1u64..4, any::<bool>(), proptest::collection::vec(constraint(), 0..2), any::<prop::sample::Index>()), 1..80),
    ) {
        let keys = ["zone", "gpu", "arch"];
        let vals = ["a", "b", "c"];
        let c = ClusterState::default();
        for (i, (cpu, mem, ls)) in workers.iter().enumerate() {
            let l: BTreeMap<String, String> = ls.iter().map(|(k, v)| (keys[*k].to_string(), vals[*v].to_string())).collect();
            c.register(WorkerSpec { id: WorkerId::from_u128(i as u128), labels: l, capacity: Resources::new(cpu * 1000, mem * 1000, 0) }, Timestamp(0)).unwrap();
        }
        let mut held: Vec<(WorkerId, JobId)> = Vec::new();
        for (kind, cpu, mem, spread, cons, pick) in ops {
            let policy = if spread { Policy::Spread } else { Policy::BinPack };
            let r = PlacementRequest { resources: Resources::new(cpu * 700, mem * 700, 0), constraints: &cons, policy, exclude: None, now: Timestamp(0) };
            match kind {
                0 | 1 => {
                    let fast = c.place(&r);
                    prop_assert_eq!(fast, c.place_by_scan(&r));
                    if let Some(w) = fast {
                        let j = JobId::new();
                        c.reserve(w, j, r.resources).unwrap();
                        held.push((w, j));
                    } else {
                        prop_assert!(c.explain(&r).is_some());
                    }
                }
                2 if !held.is_empty() => {
                    let (w, j) = held.swap_remove(pick.index(held.len()));
                    c.release(w, j);
                }
                _ => {
                    let w = WorkerId::from_u128(pick.index(workers.len()) as u128);
                    let _ = c.drain(w);
                }
            }
        }
    }
}
