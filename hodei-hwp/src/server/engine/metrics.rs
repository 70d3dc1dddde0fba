//! Server metrics, kept in atomics and rendered in the Prometheus text
//! format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use hodei_core::{JobState, TenantId};
use hodei_sched::{ClusterState, SchedulerStats};
use hodei_store::WriteStats;

/// Upper bounds of the submit-to-start histogram, seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

/// States a job is counted under.
const STATES: [&str; 9] = [
    "pending",
    "queued",
    "assigned",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "lost",
];

fn state_index(s: &JobState) -> usize {
    match s {
        JobState::Pending => 0,
        JobState::Queued => 1,
        JobState::Assigned { .. } => 2,
        JobState::Running { .. } => 3,
        JobState::Succeeded => 4,
        JobState::Failed { .. } => 5,
        JobState::Cancelled => 6,
        JobState::TimedOut => 7,
        JobState::Lost => 8,
    }
}

/// A fixed-bucket histogram on atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The buckets as (upper bound, observations at or below it), the
    /// last bound infinite; the count; the sum in seconds.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut out = Vec::with_capacity(BUCKETS.len() + 1);
        let mut c = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            c += self.counts[i].load(Ordering::Relaxed);
            out.push((*b, c));
        }
        c += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        out.push((f64::INFINITY, c));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (out, c, sum)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Counters and gauges the server keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    jobs: [AtomicI64; STATES.len()],
    /// From submission to the agent's start report.
    pub submit_to_start: Histogram,
    /// Heartbeats received.
    pub heartbeats: AtomicU64,
    /// Log bytes stored.
    pub log_bytes: AtomicU64,
    /// Log batches stored.
    pub log_batches: AtomicU64,
    /// Jobs submitted (new ones, not idempotent repeats).
    pub submitted: AtomicU64,
    /// TLS handshakes refused or timed out, on either listener.
    pub tls_handshake_failures: AtomicU64,
    /// Refused authentications past the audit trail's rate, counted only.
    pub audit_refusals_suppressed: AtomicU64,
    /// Jobs dispatched to a worker, by tenant; each tenant's weight.
    tenants: parking_lot::Mutex<BTreeMap<TenantId, TenantCounts>>,
}

/// What the server counts per tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantCounts {
    /// Jobs dispatched to a worker (attempts assigned).
    pub dispatched: u64,
    /// Its weight in fair sharing; `None` when the default applies.
    pub weight: Option<u32>,
}

/// What only the engine knows, taken on request.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Queued jobs by tenant and priority.
    pub queue_depths: Vec<(TenantId, u8, usize)>,
    /// The scheduler's counts.
    pub stats: SchedulerStats,
}

impl Metrics {
    /// A job now counts under `s`.
    pub fn job_entered(&self, s: &JobState) {
        self.jobs[state_index(s)].fetch_add(1, Ordering::Relaxed);
    }

    /// A job moved from one state to another.
    pub fn job_moved(&self, from: &JobState, to: &JobState) {
        self.jobs[state_index(from)].fetch_sub(1, Ordering::Relaxed);
        self.jobs[state_index(to)].fetch_add(1, Ordering::Relaxed);
    }

    /// `tenant` weighs `weight` in fair sharing.
    pub fn set_weight(&self, tenant: TenantId, weight: u32) {
        self.tenants.lock().entry(tenant).or_default().weight = Some(weight);
    }

    /// An attempt of `tenant`'s was assigned to a worker.
    pub fn dispatched(&self, tenant: &TenantId) {
        let mut t = self.tenants.lock();
        match t.get_mut(tenant) {
            Some(c) => c.dispatched += 1,
            None => {
                t.insert(
                    tenant.clone(),
                    TenantCounts {
                        dispatched: 1,
                        weight: None,
                    },
                );
            }
        }
    }

    /// Every tenant seen: its dispatches and weight.
    pub fn tenants(&self) -> Vec<(TenantId, TenantCounts)> {
        self.tenants
            .lock()
            .iter()
            .map(|(t, c)| (t.clone(), *c))
            .collect()
    }

    /// Jobs counted under each state, by name.
    pub fn jobs_by_state(&self) -> Vec<(&'static str, i64)> {
        STATES
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, self.jobs[i].load(Ordering::Relaxed).max(0)))
            .collect()
    }

    /// Jobs now in the state named `state` (`"queued"`, `"succeeded"`, ...).
    pub fn jobs_in(&self, state: &str) -> i64 {
        STATES
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.jobs[i].load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition of everything.
    pub fn render(
        &self,
        snapshot: &Snapshot,
        cluster: &ClusterState,
        store: Option<&WriteStats>,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        let _ = writeln!(
            o,
            "# HELP hodei_queue_depth Jobs waiting for a worker, by tenant and priority."
        );
        let _ = writeln!(o, "# TYPE hodei_queue_depth gauge");
        for (tenant, p, n) in &snapshot.queue_depths {
            let _ = writeln!(
                o,
                "hodei_queue_depth{{tenant=\"{}\",priority=\"{p}\"}} {n}",
                escape(tenant.as_str())
            );
        }
        let _ = writeln!(
            o,
            "# HELP hodei_jobs Jobs by state (ended states count since the server started)."
        );
        let _ = writeln!(o, "# TYPE hodei_jobs gauge");
        for (i, s) in STATES.iter().enumerate() {
            let _ = writeln!(
                o,
                "hodei_jobs{{state=\"{s}\"}} {}",
                self.jobs[i].load(Ordering::Relaxed).max(0)
            );
        }
        let tenants = self.tenants();
        let _ = writeln!(
            o,
            "# HELP hodei_dispatched_total Attempts assigned to a worker, by tenant."
        );
        let _ = writeln!(o, "# TYPE hodei_dispatched_total counter");
        for (t, c) in &tenants {
            let _ = writeln!(
                o,
                "hodei_dispatched_total{{tenant=\"{}\"}} {}",
                escape(t.as_str()),
                c.dispatched
            );
        }
        let _ = writeln!(
            o,
            "# HELP hodei_tenant_weight A tenant's weight in fair sharing (tenants given one)."
        );
        let _ = writeln!(o, "# TYPE hodei_tenant_weight gauge");
        for (t, c) in &tenants {
            if let Some(w) = c.weight {
                let _ = writeln!(
                    o,
                    "hodei_tenant_weight{{tenant=\"{}\"}} {w}",
                    escape(t.as_str())
                );
            }
        }
        counter(
            o,
            "hodei_jobs_submitted_total",
            "Jobs accepted.",
            self.submitted.load(Ordering::Relaxed),
        );
        counter(
            o,
            "hodei_tls_handshake_failures_total",
            "TLS handshakes refused or timed out.",
            self.tls_handshake_failures.load(Ordering::Relaxed),
        );
        counter(
            o,
            "hodei_audit_refusals_suppressed_total",
            "Refused authentications past the audit trail's rate (counted, not recorded).",
            self.audit_refusals_suppressed.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP hodei_scheduler_jobs Jobs the scheduler tracks, by where they wait."
        );
        let _ = writeln!(o, "# TYPE hodei_scheduler_jobs gauge");
        let st = &snapshot.stats;
        for (k, v) in [
            ("tracked", st.tracked),
            ("queued", st.queued),
            ("blocked", st.blocked),
            ("unplaceable", st.unplaceable),
            ("over_quota", st.over_quota),
            ("retrying", st.retrying),
        ] {
            let _ = writeln!(o, "hodei_scheduler_jobs{{kind=\"{k}\"}} {v}");
        }
        self.submit_to_start.render(
            o,
            "hodei_submit_to_start_seconds",
            "From submission to the agent's start report.",
        );
        let (ready, draining, lost) = cluster.counts();
        let _ = writeln!(o, "# HELP hodei_workers Workers by state.");
        let _ = writeln!(o, "# TYPE hodei_workers gauge");
        let _ = writeln!(o, "hodei_workers{{state=\"ready\"}} {ready}");
        let _ = writeln!(o, "hodei_workers{{state=\"draining\"}} {draining}");
        let _ = writeln!(o, "hodei_workers{{state=\"lost\"}} {lost}");
        counter(
            o,
            "hodei_heartbeats_total",
            "Heartbeats received from agents.",
            self.heartbeats.load(Ordering::Relaxed),
        );
        counter(
            o,
            "hodei_log_bytes_total",
            "Job output bytes stored.",
            self.log_bytes.load(Ordering::Relaxed),
        );
        counter(
            o,
            "hodei_log_batches_total",
            "Job output batches stored.",
            self.log_batches.load(Ordering::Relaxed),
        );
        if let Some(w) = store {
            let _ = writeln!(
                o,
                "# HELP hodei_store_commit_seconds Time in store commits (fsync included)."
            );
            let _ = writeln!(o, "# TYPE hodei_store_commit_seconds summary");
            let _ = writeln!(
                o,
                "hodei_store_commit_seconds_sum {}",
                w.commit_micros() as f64 / 1e6
            );
            let _ = writeln!(o, "hodei_store_commit_seconds_count {}", w.commits());
            let _ = writeln!(
                o,
                "# HELP hodei_store_commit_batch_size Writes per store commit."
            );
            let _ = writeln!(o, "# TYPE hodei_store_commit_batch_size summary");
            let _ = writeln!(o, "hodei_store_commit_batch_size_sum {}", w.writes());
            let _ = writeln!(o, "hodei_store_commit_batch_size_count {}", w.commits());
            let _ = writeln!(
                o,
                "# HELP hodei_store_commit_batch_size_max The largest commit, in writes."
            );
            let _ = writeln!(o, "# TYPE hodei_store_commit_batch_size_max gauge");
            let _ = writeln!(o, "hodei_store_commit_batch_size_max {}", w.largest_batch());
        }
        out
    }
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} counter");
    let _ = writeln!(o, "{name} {v}");
}

/// Label values escape backslash, quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(1000));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.001\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"0.01\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"300\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
    }

    #[test]
    fn states_move_and_render() {
        let m = Metrics::default();
        m.job_entered(&JobState::Pending);
        m.job_moved(&JobState::Pending, &JobState::Queued);
        assert_eq!(m.jobs_in("queued"), 1);
        assert_eq!(m.jobs_in("pending"), 0);
        let cluster = ClusterState::new({
            let mut c = hodei_sched::ClusterConfig::default();
            c.heartbeat_timeout = Duration::from_secs(1);
            c
        });
        let snap = Snapshot {
            queue_depths: vec![("a\"b".parse().unwrap_or_default(), 3, 2)],
            stats: SchedulerStats::default(),
        };
        let text = m.render(&snap, &cluster, None);
        assert!(text.contains("hodei_jobs{state=\"queued\"} 1\n"));
        assert!(text.contains("hodei_workers{state=\"ready\"} 0\n"));
    }
}
