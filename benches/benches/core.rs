//! hodei-core: the event bus and the secret masker, each beside a baseline.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hodei_core::{Bus, Masker, RecvError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EVENTS: u64 = 1_000_000;
const SUBSCRIBERS: usize = 4;
const CAPACITY: usize = 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// One publisher thread, four subscriber tasks; every subscriber accounts for
/// every event (received, or reported missed when it lagged).
fn fanout_hodei(rt: &tokio::runtime::Runtime) -> Duration {
    let bus = Bus::new(CAPACITY);
    let subs: Vec<_> = (0..SUBSCRIBERS).map(|_| bus.subscribe()).collect();
    let start = Instant::now();
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            rt.spawn(async move {
                let mut seen = 0u64;
                loop {
                    match s.recv().await {
                        Ok(v) => {
                            black_box(v);
                            seen += 1;
                        }
                        Err(RecvError::Lagged(n)) => seen += n,
                        Err(RecvError::Closed) => return seen,
                    }
                }
            })
        })
        .collect();
    for i in 0..EVENTS {
        bus.publish(i);
    }
    drop(bus);
    rt.block_on(async {
        for t in tasks {
            assert_eq!(t.await.unwrap(), EVENTS);
        }
    });
    start.elapsed()
}

/// The same load on `tokio::sync::broadcast`, carrying `Arc<u64>` so both
/// sides deliver a shared pointer to one allocation per event, as `Bus`
/// does.
fn fanout_tokio(rt: &tokio::runtime::Runtime) -> Duration {
    use tokio::sync::broadcast::{self, error::RecvError as TokioRecvError};
    let (tx, _) = broadcast::channel::<std::sync::Arc<u64>>(CAPACITY);
    let subs: Vec<_> = (0..SUBSCRIBERS).map(|_| tx.subscribe()).collect();
    let start = Instant::now();
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            rt.spawn(async move {
                let mut seen = 0u64;
                loop {
                    match s.recv().await {
                        Ok(v) => {
                            black_box(v);
                            seen += 1;
                        }
                        Err(TokioRecvError::Lagged(n)) => seen += n,
                        Err(TokioRecvError::Closed) => return seen,
                    }
                }
            })
        })
        .collect();
    for i in 0..EVENTS {
        let _ = tx.send(std::sync::Arc::new(i));
    }
    drop(tx);
    rt.block_on(async {
        for t in tasks {
            assert_eq!(t.await.unwrap(), EVENTS);
        }
    });
    start.elapsed()
}

fn bus_fanout4(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("bus_fanout4");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(EVENTS));
    g.bench_function("hodei", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fanout_hodei(&rt)).sum())
    });
    g.bench_function("tokio_broadcast", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fanout_tokio(&rt)).sum())
    });
    g.finish();
}

/// 1 MiB of log-like text with 100 secrets of 16 to 40 bytes, each
/// appearing a few times.
fn masker_input() -> (Vec<String>, String) {
    let mut rng = StdRng::seed_from_u64(42);
    let alnum: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    let secrets: Vec<String> = (0..100)
        .map(|_| {
            let len = rng.random_range(16..=40);
            (0..len)
                .map(|_| alnum[rng.random_range(0..alnum.len())])
                .collect()
        })
        .collect();
    let words = [
        "INFO",
        "compiling",
        "crate",
        "test",
        "ok",
        "passed",
        "downloading",
        "v1.2.3",
        "error:",
        "warning",
        "build",
        "target/release",
        "finished",
        "in",
        "0.42s",
        "->",
    ];
    let mut text = String::with_capacity(1 << 20);
    let mut line = 0u64;
    while text.len() < (1 << 20) {
        line += 1;
        text.push_str(&format!(
            "2026-11-23T02:{:02}:{:02}Z ",
            line % 60,
            line % 60
        ));
        for _ in 0..rng.random_range(4..12) {
            text.push_str(words[rng.random_range(0..words.len())]);
            text.push(' ');
        }
        if line.is_multiple_of(20) {
            text.push_str("token=");
            text.push_str(&secrets[rng.random_range(0..secrets.len())]);
        }
        text.push('\n');
    }
    (secrets, text)
}

fn masker_100_secrets(c: &mut Criterion) {
    let (secrets, text) = masker_input();
    let masker = Masker::new(&secrets).unwrap();
    let mut g = c.benchmark_group("masker_100_secrets");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("hodei", |b| {
        let mut out = Vec::with_capacity(text.len());
        b.iter(|| {
            out.clear();
            let mut stream = masker.stream();
            for chunk in text.as_bytes().chunks(64 * 1024) {
                stream.push(chunk, &mut out);
            }
            stream.finish(&mut out);
            black_box(out.len())
        })
    });
    g.bench_function("naive_replace", |b| {
        b.iter(|| {
            let mut t = text.clone();
            for s in &secrets {
                t = t.replace(s.as_str(), "***");
            }
            black_box(t.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bus_fanout4, masker_100_secrets);
criterion_main!(benches);
