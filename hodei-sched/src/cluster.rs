//! [`ClusterState`]: the workers, their capacity, allocations and liveness.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use hodei_core::{JobId, Resources, Timestamp, WorkerId};
use parking_lot::Mutex;
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::error::ClusterError;

/// A worker's labels.
pub type Labels = BTreeMap<String, String>;

/// What a worker says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The worker's id.
    pub id: WorkerId,
    /// Its labels, matched by job constraints.
    pub labels: Labels,
    /// What it offers in all.
    pub capacity: Resources,
}

/// Live measurements a worker sends with each heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Telemetry {
    /// CPU busy, 0.0 to 100.0 (whole machine).
    pub cpu_percent: f32,
    /// Memory in use, MiB.
    pub memory_used_mb: u64,
    /// One-minute load average.
    pub load_1m: f32,
}

/// Whether a worker takes new jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkerStatus {
    /// Takes new jobs.
    Ready,
    /// Finishes what it has and takes nothing new.
    Draining,
    /// Its heartbeats stopped.
    Lost,
}

impl WorkerStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => WorkerStatus::Ready,
            1 => WorkerStatus::Draining,
            _ => WorkerStatus::Lost,
        }
    }

    /// A short lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            WorkerStatus::Ready => "ready",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Lost => "lost",
        }
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A copy of what is known about one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSnapshot {
    /// The worker's id.
    pub id: WorkerId,
    /// Its labels.
    pub labels: Labels,
    /// What it offers in all.
    pub capacity: Resources,
    /// What is reserved on it now.
    pub allocated: Resources,
    /// Jobs holding reservations on it.
    pub jobs: Vec<JobId>,
    /// Its status.
    pub status: WorkerStatus,
    /// Its last telemetry.
    pub telemetry: Telemetry,
    /// When its last heartbeat (or registration) arrived.
    pub last_heartbeat: Timestamp,
    /// Heartbeats received since registration.
    pub heartbeats: u64,
}

/// A worker declared lost, with the jobs it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWorker {
    /// The worker.
    pub id: WorkerId,
    /// Jobs that held reservations on it; their reservations are released.
    pub jobs: Vec<JobId>,
}

/// The per-worker fields a heartbeat touches: atomics only, so heartbeats
/// from many connections never contend on a lock.
#[derive(Debug)]
pub(crate) struct Live {
    last_heartbeat: AtomicU64,
    heartbeats: AtomicU64,
    cpu_permille: AtomicU32,
    memory_used_mb: AtomicU64,
    load_milli: AtomicU32,
    status: AtomicU8,
}

impl Live {
    pub(crate) fn status(&self) -> WorkerStatus {
        WorkerStatus::from_u8(self.status.load(Ordering::Acquire))
    }

    fn telemetry(&self) -> Telemetry {
        Telemetry {
            cpu_percent: self.cpu_permille.load(Ordering::Relaxed) as f32 / 10.0,
            memory_used_mb: self.memory_used_mb.load(Ordering::Relaxed),
            load_1m: self.load_milli.load(Ordering::Relaxed) as f32 / 1000.0,
        }
    }

    pub(crate) fn healthy_at(&self, now: Timestamp, timeout: Duration) -> bool {
        let last = Timestamp(self.last_heartbeat.load(Ordering::Relaxed));
        self.status() == WorkerStatus::Ready && now.saturating_since(last) <= timeout
    }
}

/// The capacity index key: free memory, free CPU, free GPUs, id. Ordered
/// so that a range scan from a request's memory finds the tightest fits
/// first (bin-packing) and a reverse scan the emptiest workers (spread).
/// Placement's preference among fitting workers is exactly this order.
pub(crate) type FreeKey = (u64, u32, u32, WorkerId);

pub(crate) struct Alloc {
    pub(crate) labels: Arc<Labels>,
    pub(crate) capacity: Resources,
    pub(crate) allocated: Resources,
    pub(crate) jobs: FxHashMap<JobId, Resources>,
    pub(crate) live: Arc<Live>,
    /// In the free-capacity indexes (Ready).
    pub(crate) indexed: bool,
}

impl Alloc {
    pub(crate) fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }

    fn key(&self, id: WorkerId) -> FreeKey {
        let f = self.free();
        (f.memory_mb, f.cpu_millis, f.gpus, id)
    }
}

/// Buckets of [`CapacitySet`]: one for no free CPU, then one per power of
/// two of free millicores.
const BUCKETS: usize = 34;

fn bucket(cpu: u32) -> usize {
    if cpu == 0 {
        0
    } else {
        1 + cpu.ilog2() as usize
    }
}

/// Workers by free capacity: bucketed by free CPU (powers of two), each
/// bucket ordered by free memory. A query for `c` millicores searches only
/// the buckets that can hold `c`; in every bucket above `c`'s own, each
/// worker has enough CPU, so the first with enough memory fits, and workers
/// whose CPU is used up are never walked past.
#[derive(Default)]
pub(crate) struct CapacitySet {
    buckets: Vec<BTreeSet<FreeKey>>,
    len: usize,
}

impl CapacitySet {
    fn insert(&mut self, key: FreeKey) {
        if self.buckets.is_empty() {
            self.buckets.resize_with(BUCKETS, BTreeSet::new);
        }
        if self.buckets[bucket(key.1)].insert(key) {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &FreeKey) {
        if let Some(b) = self.buckets.get_mut(bucket(key.1))
            && b.remove(key)
        {
            self.len -= 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The smallest (`spread == false`) or largest key with at least
    /// `mem` free memory and `cpu` free CPU that `ok` accepts.
    pub(crate) fn best(
        &self,
        cpu: u32,
        mem: u64,
        spread: bool,
        mut ok: impl FnMut(&FreeKey) -> bool,
    ) -> Option<FreeKey> {
        let from: FreeKey = (mem, 0, 0, WorkerId::from_u128(0));
        let mut best: Option<FreeKey> = None;
        for set in self.buckets.iter().skip(bucket(cpu)) {
            if set.is_empty() {
                continue;
            }
            let mut pred = |k: &&FreeKey| k.1 >= cpu && ok(k);
            let found = if spread {
                set.range(from..).rev().find(&mut pred)
            } else {
                set.range(from..).find(&mut pred)
            };
            if let Some(&k) = found {
                best = Some(match best {
                    None => k,
                    Some(b) if spread => b.max(k),
                    Some(b) => b.min(k),
                });
            }
        }
        best
    }
}

/// Workers, their allocations, and the indexes placement searches.
#[derive(Default)]
pub(crate) struct Index {
    pub(crate) allocs: FxHashMap<WorkerId, Alloc>,
    /// Every Ready worker by free capacity.
    pub(crate) all: CapacitySet,
    /// Ready workers by (label key, label value), then free capacity.
    pub(crate) by_label: FxHashMap<(String, String), CapacitySet>,
    /// Ready workers by label key, then free capacity.
    pub(crate) by_key: FxHashMap<String, CapacitySet>,
}

impl Index {
    fn unindex(&mut self, id: WorkerId) {
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        if !a.indexed {
            return;
        }
        a.indexed = false;
        let key = a.key(id);
        self.all.remove(&key);
        for (k, v) in a.labels.iter() {
            if let Some(set) = self.by_label.get_mut(&(k.clone(), v.clone())) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_label.remove(&(k.clone(), v.clone()));
                }
            }
            if let Some(set) = self.by_key.get_mut(k) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
    }

    fn index(&mut self, id: WorkerId) {
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        if a.indexed || a.live.status() != WorkerStatus::Ready {
            return;
        }
        a.indexed = true;
        let key = a.key(id);
        self.all.insert(key);
        for (k, v) in a.labels.iter() {
            self.by_label
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(key);
            self.by_key.entry(k.clone()).or_default().insert(key);
        }
    }

    pub(crate) fn reserve(
        &mut self,
        worker: WorkerId,
        job: JobId,
        resources: Resources,
    ) -> Result<(), ClusterError> {
        let a = self
            .allocs
            .get(&worker)
            .ok_or(ClusterError::UnknownWorker(worker))?;
        if a.live.status() != WorkerStatus::Ready {
            return Err(ClusterError::NotReady(worker));
        }
        if a.jobs.contains_key(&job) {
            return Err(ClusterError::AlreadyReserved { worker, job });
        }
        let total = a
            .allocated
            .checked_add(&resources)
            .filter(|t| t.fits(&a.capacity))
            .ok_or(ClusterError::Insufficient {
                worker,
                requested: resources,
                free: a.free(),
            })?;
        self.reindex(worker, |a| {
            a.allocated = total;
            a.jobs.insert(job, resources);
        });
        Ok(())
    }

    /// Applies `change` to a worker's allocation, keeping the indexes in
    /// step with its free capacity.
    fn reindex<R>(&mut self, id: WorkerId, change: impl FnOnce(&mut Alloc) -> R) -> Option<R> {
        let was = self.allocs.get(&id)?.indexed;
        if was {
            self.unindex(id);
        }
        let r = change(self.allocs.get_mut(&id)?);
        if was {
            self.index(id);
        }
        Some(r)
    }
}

/// Configuration of a [`ClusterState`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// A worker whose last heartbeat is older than this is lost.
    pub heartbeat_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat_timeout: Duration::from_secs(15),
        }
    }
}

/// The live picture of the cluster: workers, their labels and capacity,
/// what is reserved on each, their telemetry and liveness.
///
/// Shared between threads (`&self` everywhere):
///
/// - **Heartbeats** touch only atomics of one worker, found through a
///   sharded concurrent map: no global lock, and they never wait for
///   placement.
/// - **Reservations** (`reserve`, `release`) and membership changes take one
///   short lock over the allocations and the capacity index, so a
///   reservation is checked and applied atomically: a worker is never
///   over-committed, whatever the number of threads.
/// - **Placement** ([`place`](ClusterState::place)) searches an index of
///   Ready workers ordered by free capacity, per label and per label key, so
///   a decision costs O(b log n + k): b CPU buckets searched (at most 34),
///   k workers passed over in the bucket of the request's own CPU size or
///   for failing a GPU, health or further label check; not a scan of all n
///   workers.
// Ids are made by the server (random or time-ordered), so a fast
// non-keyed hash is safe for every map here.
pub struct ClusterState {
    pub(crate) live: DashMap<WorkerId, Arc<Live>, FxBuildHasher>,
    pub(crate) index: Mutex<Index>,
    pub(crate) config: ClusterConfig,
    topology: AtomicU64,
}

impl fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterState")
            .field("workers", &self.len())
            .finish()
    }
}

impl Default for ClusterState {
    fn default() -> Self {
        Self::new(ClusterConfig::default())
    }
}

impl ClusterState {
    /// An empty cluster.
    pub fn new(config: ClusterConfig) -> Self {
        ClusterState {
            live: DashMap::with_hasher(FxBuildHasher),
            index: Mutex::new(Index::default()),
            config,
            topology: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> ClusterConfig {
        self.config
    }

    /// Workers known, in any status.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True with no workers.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Bumped whenever a worker joins, leaves, drains, is lost or changes
    /// its capacity or labels: what could ever be placed may have changed.
    pub fn topology_version(&self) -> u64 {
        self.topology.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.topology.fetch_add(1, Ordering::AcqRel);
    }

    /// Registers a worker, or re-registers one that reconnects: its labels
    /// and capacity are replaced, its reservations kept, and it is Ready.
    ///
    /// # Errors
    ///
    /// [`ClusterError::ZeroCapacity`] when the capacity offers nothing.
    pub fn register(&self, spec: WorkerSpec, now: Timestamp) -> Result<(), ClusterError> {
        if spec.capacity.is_zero() {
            return Err(ClusterError::ZeroCapacity(spec.id));
        }
        let id = spec.id;
        let mut idx = self.index.lock();
        idx.unindex(id);
        let live = match self.live.get(&id) {
            Some(l) => Arc::clone(&l),
            None => {
                let l = Arc::new(Live {
                    last_heartbeat: AtomicU64::new(now.0),
                    heartbeats: AtomicU64::new(0),
                    cpu_permille: AtomicU32::new(0),
                    memory_used_mb: AtomicU64::new(0),
                    load_milli: AtomicU32::new(0),
                    status: AtomicU8::new(0),
                });
                self.live.insert(id, Arc::clone(&l));
                l
            }
        };
        live.last_heartbeat.store(now.0, Ordering::Relaxed);
        live.status.store(0, Ordering::Release);
        let labels = Arc::new(spec.labels);
        match idx.allocs.get_mut(&id) {
            Some(a) => {
                a.labels = labels;
                a.capacity = spec.capacity;
            }
            None => {
                idx.allocs.insert(
                    id,
                    Alloc {
                        labels,
                        capacity: spec.capacity,
                        allocated: Resources::ZERO,
                        jobs: FxHashMap::default(),
                        live,
                        indexed: false,
                    },
                );
            }
        }
        idx.index(id);
        drop(idx);
        self.bump();
        Ok(())
    }

    /// Records a heartbeat. Lock-free apart from the map's shard read lock.
    ///
    /// # Errors
    ///
    /// [`ClusterError::UnknownWorker`] for a worker not registered (or already
    /// lost).
    pub fn heartbeat(
        &self,
        id: WorkerId,
        telemetry: Telemetry,
        now: Timestamp,
    ) -> Result<(), ClusterError> {
        let live = self.live.get(&id).ok_or(ClusterError::UnknownWorker(id))?;
        if live.status() == WorkerStatus::Lost {
            return Err(ClusterError::WorkerLost(id));
        }
        live.last_heartbeat.fetch_max(now.0, Ordering::Relaxed);
        live.heartbeats.fetch_add(1, Ordering::Relaxed);
        let permille = (telemetry.cpu_percent.clamp(0.0, 100.0) * 10.0) as u32;
        live.cpu_permille.store(permille, Ordering::Relaxed);
        live.memory_used_mb
            .store(telemetry.memory_used_mb, Ordering::Relaxed);
        let load = (telemetry.load_1m.max(0.0) * 1000.0).min(u32::MAX as f32) as u32;
        live.load_milli.store(load, Ordering::Relaxed);
        Ok(())
    }

    /// Stops placing new jobs on a worker; its running jobs keep their
    /// reservations.
    ///
    /// # Errors
    ///
    /// [`ClusterError::UnknownWorker`] for a worker not registered.
    pub fn drain(&self, id: WorkerId) -> Result<(), ClusterError> {
        let mut idx = self.index.lock();
        let live = Arc::clone(
            &idx.allocs
                .get(&id)
                .ok_or(ClusterError::UnknownWorker(id))?
                .live,
        );
        if live.status() == WorkerStatus::Lost {
            return Err(ClusterError::WorkerLost(id));
        }
        live.status.store(1, Ordering::Release);
        idx.unindex(id);
        drop(idx);
        self.bump();
        Ok(())
    }

    /// Removes a worker, returning the jobs that held reservations on it.
    ///
    /// # Errors
    ///
    /// [`ClusterError::UnknownWorker`] for a worker not registered.
    pub fn deregister(&self, id: WorkerId) -> Result<Vec<JobId>, ClusterError> {
        let mut idx = self.index.lock();
        idx.unindex(id);
        let alloc = idx
            .allocs
            .remove(&id)
            .ok_or(ClusterError::UnknownWorker(id))?;
        self.live.remove(&id);
        drop(idx);
        self.bump();
        Ok(alloc.jobs.into_keys().collect())
    }

    /// Reserves `resources` on `worker` for `job`, atomically: it fails
    /// rather than over-commit, and on a worker not Ready.
    ///
    /// # Errors
    ///
    /// [`ClusterError`] when the worker is unknown, lost or not ready, lacks
    /// the room, or the job already holds a reservation there.
    pub fn reserve(
        &self,
        worker: WorkerId,
        job: JobId,
        resources: Resources,
    ) -> Result<(), ClusterError> {
        self.index.lock().reserve(worker, job, resources)
    }

    /// Releases `job`'s reservation on `worker`, returning what it held, or
    /// `None` if it held nothing there (releasing twice is harmless).
    pub fn release(&self, worker: WorkerId, job: JobId) -> Option<Resources> {
        let mut idx = self.index.lock();
        idx.reindex(worker, |a| {
            let r = a.jobs.remove(&job)?;
            a.allocated = a.allocated.saturating_sub(&r);
            Some(r)
        })?
    }

    /// Declares lost every Ready or Draining worker whose last heartbeat is
    /// older than the heartbeat timeout at `now`, releasing their
    /// reservations and returning them with the jobs they held.
    pub fn expire(&self, now: Timestamp) -> Vec<LostWorker> {
        let timeout = self.config.heartbeat_timeout;
        let stale: Vec<WorkerId> = self
            .live
            .iter()
            .filter(|e| {
                let l = e.value();
                l.status() != WorkerStatus::Lost
                    && now.saturating_since(Timestamp(l.last_heartbeat.load(Ordering::Relaxed)))
                        > timeout
            })
            .map(|e| *e.key())
            .collect();
        if stale.is_empty() {
            return Vec::new();
        }
        let mut idx = self.index.lock();
        let mut lost = Vec::with_capacity(stale.len());
        for id in stale {
            idx.unindex(id);
            if let Some(a) = idx.allocs.get_mut(&id) {
                a.live.status.store(2, Ordering::Release);
                a.allocated = Resources::ZERO;
                let mut jobs: Vec<JobId> = a.jobs.drain().map(|(j, _)| j).collect();
                jobs.sort_unstable();
                lost.push(LostWorker { id, jobs });
            }
        }
        drop(idx);
        self.bump();
        lost
    }

    /// When the next worker would expire if no heartbeat arrives: the
    /// oldest heartbeat of a Ready or Draining worker plus the timeout.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.live
            .iter()
            .filter(|e| e.value().status() != WorkerStatus::Lost)
            .map(|e| Timestamp(e.value().last_heartbeat.load(Ordering::Relaxed)))
            .min()
            .map(|t| t + self.config.heartbeat_timeout + Duration::from_millis(1))
    }

    /// A worker's status.
    pub fn status(&self, id: WorkerId) -> Option<WorkerStatus> {
        self.live.get(&id).map(|l| l.status())
    }

    /// A copy of what is known about one worker.
    pub fn worker(&self, id: WorkerId) -> Option<WorkerSnapshot> {
        let idx = self.index.lock();
        idx.allocs.get(&id).map(|a| snapshot(id, a))
    }

    /// Copies of every worker, sorted by id.
    pub fn workers(&self) -> Vec<WorkerSnapshot> {
        let idx = self.index.lock();
        let mut v: Vec<_> = idx.allocs.iter().map(|(id, a)| snapshot(*id, a)).collect();
        v.sort_by_key(|w| w.id);
        v
    }

    /// Workers by status: (ready, draining, lost).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for e in self.live.iter() {
            match e.value().status() {
                WorkerStatus::Ready => c.0 += 1,
                WorkerStatus::Draining => c.1 += 1,
                WorkerStatus::Lost => c.2 += 1,
            }
        }
        c
    }
}

fn snapshot(id: WorkerId, a: &Alloc) -> WorkerSnapshot {
    let mut jobs: Vec<JobId> = a.jobs.keys().copied().collect();
    jobs.sort_unstable();
    WorkerSnapshot {
        id,
        labels: (*a.labels).clone(),
        capacity: a.capacity,
        allocated: a.allocated,
        jobs,
        status: a.live.status(),
        telemetry: a.live.telemetry(),
        last_heartbeat: Timestamp(a.live.last_heartbeat.load(Ordering::Relaxed)),
        heartbeats: a.live.heartbeats.load(Ordering::Relaxed),
    }
}
