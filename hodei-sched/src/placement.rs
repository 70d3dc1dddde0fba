//! Placement: filter workers (constraints, fit, healthy, not draining),
//! then score them (bin-pack or spread); and say why when nothing fits.

use std::fmt;
use std::time::Duration;

use hodei_core::{Constraint, ConstraintOp, JobId, Resources, Timestamp, WorkerId};

use crate::cluster::{CapacitySet, ClusterState, FreeKey, Index, WorkerStatus};

/// How to choose among the workers a job fits on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The fitting worker with the least free memory, then CPU: fills
    /// workers up and keeps whole machines free for large jobs.
    #[default]
    BinPack,
    /// The fitting worker with the most free memory, then CPU: spreads load
    /// and the blast radius of a lost worker.
    Spread,
}

/// What to place.
#[derive(Clone, Copy, Debug)]
pub struct PlacementRequest<'a> {
    /// What the job needs.
    pub resources: Resources,
    /// Label selectors the worker must satisfy.
    pub constraints: &'a [Constraint],
    /// How to choose among fitting workers.
    pub policy: Policy,
    /// A worker not to use (held for a larger job waiting ahead).
    pub exclude: Option<WorkerId>,
    /// The current time, to skip workers whose heartbeats are late.
    pub now: Timestamp,
}

/// Why a job could not be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The cluster has no workers.
    NoWorkers,
    /// No worker has labels satisfying the constraints.
    NoMatchingLabels,
    /// Workers match the labels but none is large enough, even empty.
    TooLarge {
        /// The largest capacity among workers matching the labels.
        largest: Resources,
    },
    /// Matching, large-enough workers exist but none is Ready and healthy
    /// (all draining, lost, or late with heartbeats).
    NoneReady,
    /// Matching workers are busy: the job fits once capacity frees.
    NoFreeCapacity,
}

impl Rejection {
    /// True if only a change of the cluster's workers (one joining, one
    /// changing its labels or capacity) can make the job placeable.
    pub fn needs_new_workers(&self) -> bool {
        matches!(
            self,
            Rejection::NoWorkers | Rejection::NoMatchingLabels | Rejection::TooLarge { .. }
        )
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoWorkers => f.write_str("no workers are registered"),
            Rejection::NoMatchingLabels => {
                f.write_str("no worker has labels matching the constraints")
            }
            Rejection::TooLarge { largest } => write!(
                f,
                "no matching worker is large enough (largest offers {largest})"
            ),
            Rejection::NoneReady => {
                f.write_str("every matching worker is draining, lost or not heartbeating")
            }
            Rejection::NoFreeCapacity => {
                f.write_str("matching workers are busy; waiting for capacity")
            }
        }
    }
}

impl Index {
    /// The index sets to search: the most selective `in` / `exists`
    /// constraint's, else all Ready workers.
    fn candidate_sets<'a>(&'a self, constraints: &[Constraint]) -> Vec<&'a CapacitySet> {
        let mut best: Option<(usize, Vec<&CapacitySet>)> = None;
        for c in constraints {
            let sets: Vec<&CapacitySet> = match c.op {
                ConstraintOp::In => c
                    .values
                    .iter()
                    .filter_map(|v| self.by_label.get(&(c.key.clone(), v.clone())))
                    .collect(),
                ConstraintOp::Exists => self.by_key.get(&c.key).into_iter().collect(),
                ConstraintOp::NotIn | ConstraintOp::NotExists => continue,
            };
            let size = sets.iter().map(|s| s.len()).sum();
            if best.as_ref().is_none_or(|(n, _)| size < *n) {
                best = Some((size, sets));
            }
        }
        best.map_or_else(|| vec![&self.all], |(_, sets)| sets)
    }

    fn acceptable(&self, key: &FreeKey, req: &PlacementRequest<'_>, timeout: Duration) -> bool {
        let (_, _, gpus, id) = *key;
        if gpus < req.resources.gpus || Some(id) == req.exclude {
            return false;
        }
        let Some(a) = self.allocs.get(&id) else {
            return false;
        };
        a.live.healthy_at(req.now, timeout) && req.constraints.iter().all(|c| c.matches(&a.labels))
    }

    pub(crate) fn find(&self, req: &PlacementRequest<'_>, timeout: Duration) -> Option<WorkerId> {
        let spread = req.policy == Policy::Spread;
        let mut best: Option<FreeKey> = None;
        for set in self.candidate_sets(req.constraints) {
            let found = set.best(
                req.resources.cpu_millis,
                req.resources.memory_mb,
                spread,
                |k| self.acceptable(k, req, timeout),
            );
            best = match (best, found) {
                (None, f) => f,
                (b, None) => b,
                (Some(b), Some(f)) if spread => Some(b.max(f)),
                (Some(b), Some(f)) => Some(b.min(f)),
            };
        }
        best.map(|k| k.3)
    }
}

impl ClusterState {
    /// Chooses a worker for a job, or `None` if none fits now. Does not
    /// reserve: follow with [`reserve`](ClusterState::reserve), which
    /// re-checks atomically.
    pub fn place(&self, req: &PlacementRequest<'_>) -> Option<WorkerId> {
        self.index.lock().find(req, self.config.heartbeat_timeout)
    }

    /// Chooses a worker as [`place`](ClusterState::place) does and reserves
    /// the request on it for `job`, under one lock.
    pub fn place_and_reserve(&self, req: &PlacementRequest<'_>, job: JobId) -> Option<WorkerId> {
        let mut idx = self.index.lock();
        let worker = idx.find(req, self.config.heartbeat_timeout)?;
        idx.reserve(worker, job, req.resources).ok()?;
        Some(worker)
    }

    /// Why [`place`](ClusterState::place) finds nothing for `req`. A scan of
    /// all workers: meant for the failure path, not for every decision.
    pub fn explain(&self, req: &PlacementRequest<'_>) -> Option<Rejection> {
        let idx = self.index.lock();
        if idx.find(req, self.config.heartbeat_timeout).is_some() {
            return None;
        }
        if idx.allocs.is_empty() {
            return Some(Rejection::NoWorkers);
        }
        let matching: Vec<_> = idx
            .allocs
            .iter()
            .filter(|(_, a)| req.constraints.iter().all(|c| c.matches(&a.labels)))
            .collect();
        if matching.is_empty() {
            return Some(Rejection::NoMatchingLabels);
        }
        let big: Vec<_> = matching
            .iter()
            .filter(|(_, a)| req.resources.fits(&a.capacity))
            .collect();
        if big.is_empty() {
            let largest = matching
                .iter()
                .map(|(_, a)| a.capacity)
                .max_by_key(|c| (c.memory_mb, c.cpu_millis, c.gpus))
                .unwrap_or(Resources::ZERO);
            return Some(Rejection::TooLarge { largest });
        }
        let timeout = self.config.heartbeat_timeout;
        if !big
            .iter()
            .any(|(id, a)| a.live.healthy_at(req.now, timeout) && Some(**id) != req.exclude)
        {
            return Some(Rejection::NoneReady);
        }
        Some(Rejection::NoFreeCapacity)
    }

    /// The worker to hold for a job that fits no free capacity now: among
    /// healthy Ready workers matching its constraints and large enough when
    /// empty, the one with the most free capacity (the soonest to fit).
    /// A scan of all workers; called once per blocked job.
    pub fn reservation_target(&self, req: &PlacementRequest<'_>) -> Option<WorkerId> {
        let idx = self.index.lock();
        let timeout = self.config.heartbeat_timeout;
        idx.allocs
            .iter()
            .filter(|(_, a)| {
                a.live.healthy_at(req.now, timeout)
                    && req.resources.fits(&a.capacity)
                    && req.constraints.iter().all(|c| c.matches(&a.labels))
            })
            .max_by_key(|(id, a)| {
                let f = a.free();
                (
                    f.memory_mb.min(req.resources.memory_mb),
                    f.cpu_millis.min(req.resources.cpu_millis),
                    f.gpus,
                    **id,
                )
            })
            .map(|(id, _)| *id)
    }

    /// True if the worker is Ready and its heartbeat is within the timeout.
    pub fn is_healthy(&self, id: WorkerId, now: Timestamp) -> bool {
        self.live
            .get(&id)
            .is_some_and(|l| l.healthy_at(now, self.config.heartbeat_timeout))
    }

    /// A slow, obviously correct placement: a scan of every worker. The
    /// baseline the index is measured against, and the model in tests.
    pub fn place_by_scan(&self, req: &PlacementRequest<'_>) -> Option<WorkerId> {
        let idx = self.index.lock();
        let timeout = self.config.heartbeat_timeout;
        let fitting = idx.allocs.iter().filter(|(id, a)| {
            a.live.status() == WorkerStatus::Ready
                && a.live.healthy_at(req.now, timeout)
                && Some(**id) != req.exclude
                && req.resources.fits(&a.free())
                && req.constraints.iter().all(|c| c.matches(&a.labels))
        });
        let key = |(id, a): &(&WorkerId, &crate::cluster::Alloc)| {
            let f = a.free();
            (f.memory_mb, f.cpu_millis, f.gpus, **id)
        };
        match req.policy {
            Policy::BinPack => fitting.min_by_key(key),
            Policy::Spread => fitting.max_by_key(key),
        }
        .map(|(id, _)| *id)
    }
}
