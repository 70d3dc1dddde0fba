//! Concurrency keys: how many jobs naming each key hold a worker, and the
//! jobs parked while their key is at its limit.
//!
//! A job holds its key from the moment it is placed (or recovered on a
//! worker) until its attempt ends; one being stopped (cancelled, timed
//! out) holds it until its worker confirms, as it holds its room. Parked
//! jobs are out of the fair queue, so they hold up no other job.

use std::collections::VecDeque;

use hodei_core::{Clock, JobId, JobState};
use rustc_hash::FxHashMap as HashMap;

use super::Scheduler;

/// Holders and parked jobs, per key.
#[derive(Default)]
pub(super) struct Keys {
    held: HashMap<String, u32>,
    holders: HashMap<JobId, String>,
    /// Jobs that found their key at its limit, in the order they did.
    parked: HashMap<String, VecDeque<JobId>>,
    /// Parked jobs handed back for a slot freed, not yet holding it (or
    /// parked again): each counts against its key's limit, so a slot is
    /// handed to one job at a time.
    granted: HashMap<JobId, String>,
    granted_per_key: HashMap<String, u32>,
}

impl Keys {
    /// Whether one more job may hold `key` under `limit`.
    pub(super) fn admits(&self, key: &str, limit: u32) -> bool {
        self.held.get(key).copied().unwrap_or(0) < limit
    }

    pub(super) fn park(&mut self, key: String, job: JobId) {
        self.ungrant(job);
        self.parked.entry(key).or_default().push_back(job);
    }

    /// Takes back the slot `job` was handed, if it was; returns its key.
    fn ungrant(&mut self, job: JobId) -> Option<String> {
        let key = self.granted.remove(&job)?;
        if let Some(n) = self.granted_per_key.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.granted_per_key.remove(&key);
            }
        }
        Some(key)
    }

    pub(super) fn parked(&self) -> usize {
        self.parked.values().map(VecDeque::len).sum()
    }

    /// Slots of `key` taken: jobs holding it, and jobs handed one.
    fn taken(&self, key: &str) -> u32 {
        self.held.get(key).copied().unwrap_or(0)
            + self.granted_per_key.get(key).copied().unwrap_or(0)
    }
}

impl<C: Clock> Scheduler<C> {
    /// `job` holds its key (if it names one); holding twice counts once.
    pub(super) fn hold_key(&mut self, job: JobId) {
        let Some(key) = self
            .get(job)
            .and_then(|t| t.req.concurrency.as_ref())
            .map(|c| c.key.clone())
        else {
            return;
        };
        self.keys.ungrant(job);
        if !self.keys.holders.contains_key(&job) {
            *self.keys.held.entry(key.clone()).or_default() += 1;
            self.keys.holders.insert(job, key);
        }
    }

    /// `job` no longer holds its key, unless it is still being stopped
    /// (it then lets go when its worker confirms), nor the slot it was
    /// handed; parked jobs get the slots freed.
    pub(super) fn release_key(&mut self, job: JobId) {
        if self.stopping.contains_key(&job) {
            return;
        }
        let key = match self.keys.holders.remove(&job) {
            Some(key) => {
                if let Some(n) = self.keys.held.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.keys.held.remove(&key);
                    }
                }
                key
            }
            None => match self.keys.ungrant(job) {
                Some(key) => key,
                None => return,
            },
        };
        self.unpark_key(&key);
    }

    /// Hands back to placement as many jobs parked on `key` as it has free
    /// slots: one at a time, so a key of limit 1 with a long line behind
    /// it costs one job per release, not the whole line.
    fn unpark_key(&mut self, key: &str) {
        let mut taken = self.keys.taken(key);
        loop {
            let Some(q) = self.keys.parked.get_mut(key) else {
                return;
            };
            let Some(&job) = q.front() else {
                self.keys.parked.remove(key);
                return;
            };
            // Parked jobs cancelled since are skipped.
            let limit = match self.index.get(&job).and_then(|&k| self.jobs.get(k)) {
                Some(t) if t.life.state == JobState::Queued => {
                    t.req.concurrency.as_ref().map_or(u32::MAX, |c| c.limit)
                }
                _ => {
                    q.pop_front();
                    continue;
                }
            };
            if taken >= limit {
                return;
            }
            q.pop_front();
            taken += 1;
            self.keys.granted.insert(job, key.to_string());
            *self
                .keys
                .granted_per_key
                .entry(key.to_string())
                .or_default() += 1;
            self.ready_again.push_back(job);
        }
    }
}
