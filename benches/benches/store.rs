//! hodei-store: durable submits with group commit beside a commit per
//! write, and recovery of a large store.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hodei_core::{Job, JobId, JobSpec, JobState, Timestamp};
use hodei_store::{RedbStore, Store, StoreConfig};

const SUBMITTERS: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn job() -> Job {
    let mut spec = JobSpec::argv(["make", "test"]);
    spec.tenant = "acme".parse().unwrap();
    Job::new(JobId::new(), spec, Timestamp(1))
}

/// 64 tasks each submit `per_task` jobs and wait for each to be durable.
async fn submit(store: &RedbStore, per_task: usize) {
    let tasks: Vec<_> = (0..SUBMITTERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    store.insert_job(job()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn store_submit_64(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("store_submit_64");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for (name, max_batch, per_task) in [("group_commit", 1024, 50), ("per_write_commit", 1, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("bench.redb"), {
            let mut c = StoreConfig::default();
            c.max_batch = max_batch;
            c
        })
        .unwrap();
        g.throughput(Throughput::Elements((SUBMITTERS * per_task) as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    rt.block_on(submit(&store, per_task));
                }
                start.elapsed()
            })
        });
        let stats = store.write_stats();
        eprintln!(
            "{name}: {} writes in {} commits (mean batch {:.1}, largest {}), mean commit {:.2} ms",
            stats.writes(),
            stats.commits(),
            stats.writes() as f64 / stats.commits().max(1) as f64,
            stats.largest_batch(),
            stats.commit_micros() as f64 / stats.commits().max(1) as f64 / 1000.0
        );
    }
    g.finish();
}

fn store_recover_100k(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recover.redb");
    {
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..100)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..1_000 {
                            let mut j = job();
                            // 10% stay queued; the rest finished long ago.
                            if (t * 1_000 + i) % 10 != 0 {
                                j.state = JobState::Succeeded;
                            }
                            store.insert_job(j).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
    }
    let mut g = c.benchmark_group("store_recover_100k");
    g.sample_size(10);
    g.bench_function("hodei", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
                let jobs = rt.block_on(store.recover()).unwrap();
                total += start.elapsed();
                assert_eq!(jobs.len(), 10_000);
                drop(store);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, store_submit_64, store_recover_100k);
criterion_main!(benches);
