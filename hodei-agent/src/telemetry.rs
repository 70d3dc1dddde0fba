//! What the machine offers and how busy it is, read with sysinfo.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hodei_core::Resources;
use parking_lot::Mutex;

/// One reading of the machine's load.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    /// CPU busy over the last interval, percent of the whole machine.
    pub cpu_percent: f32,
    /// Memory in use, MiB.
    pub memory_used_mb: u64,
    /// One-minute load average.
    pub load_1m: f32,
}

/// The machine's capacity: every CPU (in millicores) and all its memory.
pub fn detect_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u32;
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    Resources::new(cpus * 1000, sys.total_memory() / (1024 * 1024), 0)
}

/// Samples the machine on its own thread, so the async runtime never
/// waits on `/proc`, and keeps the latest reading for heartbeats.
#[derive(Debug)]
pub struct Sampler {
    latest: Arc<Mutex<Reading>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling every `every`.
    ///
    /// # Errors
    ///
    /// The sampling thread cannot be started.
    pub fn start(every: Duration) -> std::io::Result<Self> {
        let latest = Arc::new(Mutex::new(Reading::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (latest, stop) = (Arc::clone(&latest), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("hodei-telemetry".into())
                .spawn(move || {
                    let mut sys = sysinfo::System::new();
                    while !stop.load(Ordering::Acquire) {
                        sys.refresh_cpu_usage();
                        sys.refresh_memory();
                        let reading = Reading {
                            cpu_percent: sys.global_cpu_usage(),
                            memory_used_mb: sys.used_memory() / (1024 * 1024),
                            load_1m: sysinfo::System::load_average().one as f32,
                        };
                        *latest.lock() = reading;
                        std::thread::park_timeout(every);
                    }
                })?
        };
        Ok(Sampler {
            latest,
            stop,
            thread: Some(thread),
        })
    }

    /// The latest reading (zeros until the first one).
    pub fn latest(&self) -> Reading {
        *self.latest.lock()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_whole_machine() {
        let c = detect_capacity();
        assert!(c.cpu_millis >= 1000);
        assert!(c.memory_mb > 0);
    }

    #[test]
    fn sampler_reads_memory_and_stops() {
        let s = Sampler::start(Duration::from_millis(10)).unwrap();
        let mut seen = Reading::default();
        for _ in 0..200 {
            seen = s.latest();
            if seen.memory_used_mb > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(seen.memory_used_mb > 0);
        drop(s);
    }
}
