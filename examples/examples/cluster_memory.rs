//! Measures the heap used by a `ClusterState` holding 10,000 workers (20%
//! labelled, most with reservations), with a counting global allocator.
//! Prints one JSON line.
//!
//! ```text
//! cargo run --release -p hodei-examples --example cluster_memory
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use hodei_core::{JobId, Resources, Timestamp, WorkerId};
use hodei_sched::{ClusterState, Telemetry, WorkerSpec};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    const WORKERS: u128 = 10_000;
    let before = LIVE.load(Ordering::Relaxed);
    let cluster = ClusterState::default();
    let zones = ["eu-1", "eu-2", "us-1", "us-2", "ap-1"];
    let mut jobs = 0;
    for i in 0..WORKERS {
        let mut labels = BTreeMap::new();
        if i % 5 == 0 {
            labels.insert("zone".to_string(), zones[i as usize % 5].to_string());
            labels.insert("disk".to_string(), "ssd".to_string());
        }
        let id = WorkerId::from_u128(i + 1);
        let spec = WorkerSpec {
            id,
            labels,
            capacity: Resources::new(16_000, 65_536, 0),
        };
        if cluster.register(spec, Timestamp(0)).is_err() {
            eprintln!("registration refused");
            std::process::exit(1);
        }
        for _ in 0..4 {
            if cluster
                .reserve(id, JobId::new(), Resources::new(1000, 2048, 0))
                .is_ok()
            {
                jobs += 1;
            }
        }
        let t = Telemetry {
            cpu_percent: 30.0,
            memory_used_mb: 8192,
            load_1m: 1.0,
        };
        let _ = cluster.heartbeat(id, t, Timestamp(1));
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{{\"workers\":{WORKERS},\"reservations\":{jobs},\"heap_bytes\":{bytes},\"bytes_per_worker\":{}}}",
        bytes / WORKERS as isize
    );
    drop(cluster);
}
