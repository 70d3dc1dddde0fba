//! Workers and the scheduler's overview.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::spec::{ResourcesJson, resources_from_wire};
use crate::proto;

/// A worker.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkerJson {
    /// Its id.
    pub id: String,
    /// Its agent's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: ResourcesJson,
    /// What its jobs hold.
    pub allocated: ResourcesJson,
    /// `ready`, `draining` or `lost`.
    pub status: String,
    /// CPU busy, percent, from its last heartbeat.
    pub cpu_percent: f32,
    /// Memory in use, MiB.
    pub memory_used_mb: u64,
    /// Load average over a minute.
    pub load_1m: f32,
    /// Last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// The jobs on it the caller may see.
    pub jobs: Vec<String>,
}

/// A page of workers.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkerPageJson {
    /// The workers, in id order.
    pub workers: Vec<WorkerJson>,
    /// Workers in all (matching the filter).
    pub total: u64,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Queued jobs of one tenant at one priority.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct QueueDepthJson {
    /// The tenant.
    pub tenant: String,
    /// The priority.
    pub priority: u32,
    /// Jobs waiting.
    pub depth: u64,
}

/// One tenant's share of dispatches.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TenantDispatchJson {
    /// The tenant.
    pub tenant: String,
    /// Its weight in fair sharing.
    pub weight: u32,
    /// Jobs dispatched to workers since the server started.
    pub dispatched: u64,
}

/// Submit-to-start latency since the server started, seconds (estimated
/// from the histogram's buckets).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct LatencyJson {
    /// Observations.
    pub count: u64,
    /// Mean.
    pub mean_s: f64,
    /// Median (upper bound of its bucket).
    pub p50_s: f64,
    /// 90th percentile (upper bound of its bucket).
    pub p90_s: f64,
    /// 99th percentile (upper bound of its bucket).
    pub p99_s: f64,
}

/// The state of the whole scheduler, at a glance.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct OverviewJson {
    /// Queued jobs by tenant and priority (the caller's tenants).
    pub queue_depths: Vec<QueueDepthJson>,
    /// Dispatches per tenant against their weights (the caller's
    /// tenants).
    pub dispatch: Vec<TenantDispatchJson>,
    /// Workers by state: `ready`, `draining`, `lost`.
    pub workers: BTreeMap<String, u64>,
    /// Jobs by state (ended states since the server started; every
    /// tenant, shown to admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<BTreeMap<String, i64>>,
    /// Submit-to-start latency.
    pub submit_to_start: LatencyJson,
    /// Server time, ms since the epoch.
    pub now_ms: u64,
}

impl From<proto::Worker> for WorkerJson {
    fn from(w: proto::Worker) -> Self {
        WorkerJson {
            id: w.id,
            name: w.name,
            labels: w.labels.into_iter().collect(),
            capacity: resources_from_wire(w.capacity),
            allocated: resources_from_wire(w.allocated),
            status: w.status,
            // The worker service keeps only finite readings.
            cpu_percent: w.cpu_percent,
            memory_used_mb: w.memory_used_mb,
            load_1m: w.load_1m,
            last_heartbeat_ms: w.last_heartbeat_ms,
            jobs: w.jobs,
        }
    }
}
