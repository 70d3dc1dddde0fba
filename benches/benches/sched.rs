//! hodei-sched: queue, WFQ, placement, heartbeats and a million-job run,
//! each beside a baseline where one exists.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hodei_core::{Constraint, JobId, JobSpec, ManualClock, Resources, Timestamp, WorkerId};
use hodei_sched::{
    ClusterState, JobRequest, PlacementRequest, Policy, PriorityQueue, Scheduler, SchedulerConfig,
    Telemetry, Wfq, WorkerSpec,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PAIRS: u64 = 1_000_000;
const BACKLOG: u64 = 10_000;

/// The baseline: a binary heap behind a mutex, FIFO within a priority by a
/// sequence number.
struct MutexHeap {
    heap: Mutex<BinaryHeap<(u8, Reverse<u64>, u64)>>,
    seq: AtomicU64,
}

impl MutexHeap {
    fn new() -> Self {
        MutexHeap {
            heap: Mutex::new(BinaryHeap::new()),
            seq: AtomicU64::new(0),
        }
    }
    fn push(&self, p: u8, v: u64) {
        let s = self.seq.fetch_add(1, Ordering::Relaxed);
        self.heap.lock().push((p, Reverse(s), v));
    }
    fn pop(&self) -> Option<u64> {
        self.heap.lock().pop().map(|(_, _, v)| v)
    }
}

fn priorities() -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(1);
    (0..4096).map(|_| rng.random_range(0..8)).collect()
}

fn queue_push_pop(c: &mut Criterion) {
    let prios = priorities();
    let mut g = c.benchmark_group("queue_push_pop");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PAIRS));
    g.bench_function("hodei", |b| {
        let q = PriorityQueue::new(8);
        for i in 0..BACKLOG {
            q.push(prios[i as usize % prios.len()] as usize, i);
        }
        b.iter(|| {
            for i in 0..PAIRS {
                q.push(prios[i as usize & 4095] as usize, i);
                black_box(q.pop());
            }
        })
    });
    g.bench_function("mutex_binary_heap", |b| {
        let q = MutexHeap::new();
        for i in 0..BACKLOG {
            q.push(prios[i as usize % prios.len()], i);
        }
        b.iter(|| {
            for i in 0..PAIRS {
                q.push(prios[i as usize & 4095], i);
                black_box(q.pop());
            }
        })
    });
    g.finish();
}

/// 2 producers push `PAIRS` items between them; 2 consumers pop until all
/// are taken.
fn mpmc<Q: Sync>(
    q: &Q,
    push: impl Fn(&Q, u8, u64) + Sync,
    pop: impl Fn(&Q) -> Option<u64> + Sync,
) -> Duration {
    let prios = priorities();
    let taken = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (q, push, prios) = (&q, &push, &prios);
            s.spawn(move || {
                for i in 0..PAIRS / 2 {
                    push(q, prios[(i as usize + t as usize) & 4095], i);
                }
            });
        }
        for _ in 0..2 {
            let (q, pop, taken) = (&q, &pop, &taken);
            s.spawn(move || {
                while taken.load(Ordering::Relaxed) < PAIRS as usize {
                    if let Some(v) = pop(q) {
                        black_box(v);
                        taken.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn queue_mpmc_2threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_mpmc_2threads");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PAIRS));
    g.bench_function("hodei", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let q = PriorityQueue::new(8);
                    mpmc(&q, |q, p, v| q.push(p as usize, v), |q| q.pop())
                })
                .sum()
        })
    });
    g.bench_function("mutex_binary_heap", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let q = MutexHeap::new();
                    mpmc(&q, |q, p, v| q.push(p, v), |q| q.pop())
                })
                .sum()
        })
    });
    g.finish();
}

fn wfq_1000_flows(c: &mut Criterion) {
    let mut g = c.benchmark_group("wfq_1000_flows");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hodei", |b| {
        let mut q = Wfq::new();
        let mut rng = StdRng::seed_from_u64(3);
        for f in 0..1000u32 {
            q.set_weight(f, 1 + f % 4);
            for i in 0..100u64 {
                q.push(f, rng.random_range(0..8), 1, i);
            }
        }
        let mut i = 0u64;
        // Steady state: every pop is matched by a push to its flow, so 1000
        // flows stay backlogged.
        b.iter(|| {
            let d = q.pop().unwrap();
            i += 1;
            q.push(d.flow, (i & 7) as u8, 1, i);
        })
    });
    g.finish();
}

/// 10,000 heterogeneous workers, 20% labelled, about half their capacity
/// in use.
fn cluster_10k() -> ClusterState {
    let cluster = ClusterState::default();
    let mut rng = StdRng::seed_from_u64(10);
    let zones = ["eu-1", "eu-2", "us-1", "us-2", "ap-1"];
    for i in 0..10_000u128 {
        let mut labels = BTreeMap::new();
        if i % 5 == 0 {
            labels.insert(
                "zone".to_string(),
                zones[(i as usize / 5) % zones.len()].to_string(),
            );
            labels.insert("disk".to_string(), "ssd".to_string());
        }
        let cpu = [2_000, 4_000, 8_000, 16_000, 32_000, 64_000][rng.random_range(0..6)];
        let mem = cpu as u64 * rng.random_range(2..8);
        let id = WorkerId::from_u128(i + 1);
        cluster
            .register(
                WorkerSpec {
                    id,
                    labels,
                    capacity: Resources::new(cpu, mem, 0),
                },
                Timestamp(0),
            )
            .unwrap();
        let used = Resources::new(
            cpu * rng.random_range(0..8) / 10,
            mem * rng.random_range(0..8) / 10,
            0,
        );
        if !used.is_zero() {
            cluster.reserve(id, JobId::new(), used).unwrap();
        }
    }
    cluster
}

fn requests() -> Vec<(Resources, Vec<Constraint>)> {
    let mut rng = StdRng::seed_from_u64(11);
    (0..1024)
        .map(|i| {
            let cpu = [250, 500, 1000, 2000, 4000][rng.random_range(0..5)];
            let r = Resources::new(cpu, cpu as u64 * rng.random_range(1..4), 0);
            let cons = if i % 5 == 0 {
                vec![Constraint::is_in("zone", &["eu-1"])]
            } else {
                vec![]
            };
            (r, cons)
        })
        .collect()
}

fn place_10k_workers(c: &mut Criterion) {
    let cluster = cluster_10k();
    let reqs = requests();
    let mut g = c.benchmark_group("place_10k_workers");
    g.throughput(Throughput::Elements(1));
    for (name, scan) in [("hodei", false), ("linear_scan", true)] {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                let (res, cons) = &reqs[i & 1023];
                i += 1;
                let req = PlacementRequest {
                    resources: *res,
                    constraints: cons,
                    policy: Policy::BinPack,
                    exclude: None,
                    now: Timestamp(0),
                };
                black_box(if scan {
                    cluster.place_by_scan(&req)
                } else {
                    cluster.place(&req)
                })
            })
        });
    }
    g.finish();
}

fn heartbeat_10k_workers(c: &mut Criterion) {
    let cluster = cluster_10k();
    let mut g = c.benchmark_group("heartbeat_10k_workers");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hodei", |b| {
        let mut i = 0u128;
        b.iter(|| {
            i = (i + 7919) % 10_000;
            let t = Telemetry {
                cpu_percent: 42.0,
                memory_used_mb: 1024,
                load_1m: 1.5,
            };
            cluster
                .heartbeat(WorkerId::from_u128(i + 1), t, Timestamp(1_000 + i as u64))
                .unwrap()
        })
    });
    g.finish();
}

fn schedule_1m_jobs_5k_workers(c: &mut Criterion) {
    const JOBS: usize = 1_000_000;
    let mut g = c.benchmark_group("schedule_1m_jobs_5k_workers");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(JOBS as u64));
    let tenants: Vec<hodei_core::TenantId> = (0..10)
        .map(|t| format!("tenant-{t}").parse().unwrap())
        .collect();
    g.bench_function("hodei", |b| {
        b.iter_batched(
            || {
                let clock = ManualClock::new(Timestamp(1));
                let cluster = Arc::new(ClusterState::default());
                let mut sched = Scheduler::new(SchedulerConfig::default(), cluster, clock);
                for w in 0..5_000u128 {
                    sched
                        .worker_joined(WorkerSpec {
                            id: WorkerId::from_u128(w + 1),
                            labels: BTreeMap::new(),
                            capacity: Resources::new(64_000, 256 * 1024, 0),
                        })
                        .unwrap();
                }
                let jobs: Vec<JobRequest> = (0..JOBS)
                    .map(|i| {
                        let mut spec = JobSpec::argv(["true"]);
                        spec.tenant = tenants[i % 10].clone();
                        spec.priority = (i % 8) as u8;
                        spec.resources = Resources::new(250, 512, 0);
                        JobRequest::from_spec(JobId::new(), &spec)
                    })
                    .collect();
                (sched, jobs)
            },
            |(mut sched, jobs)| {
                let (actions, refused) = sched.submit_many(jobs);
                assert!(refused.is_empty());
                assert_eq!(actions.len(), 2 * JOBS, "every job placed");
                (sched, actions)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    queue_push_pop,
    queue_mpmc_2threads,
    wfq_1000_flows,
    place_10k_workers,
    heartbeat_10k_workers,
    schedule_1m_jobs_5k_workers
);
criterion_main!(benches);
