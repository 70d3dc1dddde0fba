//! Dispatch: placement passes in fair order, the head (the first job that
//! waits for room, with a worker held for it), and backfill behind it.

use hodei_core::{Clock, JobId, JobState, Timestamp, Transition};

use super::{Action, Scheduler};
use crate::placement::PlacementRequest;

/// What one attempt to place a job found.
pub(super) enum PlaceResult {
    /// Placed and assigned.
    Placed,
    /// No longer queued (cancelled, or gone): nothing to do.
    NotQueued,
    /// No room now on any worker that could run it.
    NoRoomYet,
    /// No current worker could ever run it (labels, size).
    FitsNoWorker,
    /// Its tenant's quota is full.
    OverQuota,
    /// Its concurrency key is at its limit.
    OverConcurrency,
}

/// Where a job a pass tried goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterPass {
    /// Placed, gone, the head, or set aside (over quota, fits no worker):
    /// out of the fair queue.
    LeavesQueue,
    /// No room now and not the head: it stays queued where it was.
    StaysQueued,
}

impl<C: Clock> Scheduler<C> {
    /// Places whatever is placeable now.
    pub fn schedule(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.dispatch(&mut out);
        out
    }

    pub(super) fn dispatch(&mut self, out: &mut Vec<Action>) {
        let now = self.clock.now();
        self.explained.clear();
        let topology = self.cluster.topology_version();
        if topology != self.seen_topology {
            self.seen_topology = topology;
            self.capacity_freed = true;
            // Workers changed: jobs that fit nowhere get another look,
            // through the fair queue, so a backlog built while no worker
            // could take it is still shared by weight.
            for job in std::mem::take(&mut self.unplaceable) {
                self.enqueue(job);
            }
            if let Some((_, Some(w))) = self.head
                && !self.cluster.is_healthy(w, now)
            {
                self.head = self.head.map(|(j, _)| (j, None));
            }
        }
        if std::mem::take(&mut self.capacity_freed) {
            self.epoch += 1;
            // The head goes first: a worker is being held for it.
            if let Some((head, _)) = self.head {
                self.place_one(head, now, out);
            }
        }
        // Jobs are taken in fair order; those that must wait go back where
        // they were once the pass is over, their tenants refunded.
        let mut looked_past = Vec::new();
        let window = self.config.backfill_window.max(1);
        while looked_past.len() < window {
            if let Some(job) = self.ready_again.pop_front() {
                if self.place_one(job, now, out) == AfterPass::StaysQueued {
                    self.enqueue(job);
                }
                continue;
            }
            let Some(d) = self.wfq.pop() else { break };
            let (slot, job) = d.item;
            // A cancelled job leaves its entry behind; its slot may hold
            // another job by now.
            let Some(t) = self.jobs.get(slot).filter(|t| t.req.id == job) else {
                continue;
            };
            if self.head.is_some() && t.waited_at == Some(self.epoch) {
                // Nothing changed since it last found no room.
                looked_past.push(d);
                continue;
            }
            if self.place_one(job, now, out) == AfterPass::StaysQueued {
                looked_past.push(d);
            }
        }
        self.blocked = looked_past.len() + usize::from(self.head.is_some());
        for d in looked_past.into_iter().rev() {
            self.wfq.unpop(d);
        }
    }

    /// Tries to place `job`; a job that must wait for capacity becomes the
    /// head if there is none, else it is reported so the caller keeps it
    /// queued.
    pub(super) fn place_one(
        &mut self,
        job: JobId,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> AfterPass {
        let is_head = self.head.is_some_and(|(h, _)| h == job);
        let tried = self.try_place(job, now, out);
        if is_head && !matches!(tried, PlaceResult::NoRoomYet) {
            self.head = None;
            // Its worker is no longer held: others may fit there now.
            self.epoch += 1;
        }
        match tried {
            PlaceResult::Placed | PlaceResult::NotQueued => AfterPass::LeavesQueue,
            PlaceResult::NoRoomYet if is_head => AfterPass::LeavesQueue,
            PlaceResult::NoRoomYet => {
                let epoch = self.epoch;
                if let Some(t) = self.get_mut(job) {
                    t.waited_at = Some(epoch);
                }
                if self.head.is_some() {
                    return AfterPass::StaysQueued;
                }
                let target = self.get(job).and_then(|t| {
                    self.cluster.reservation_target(&PlacementRequest {
                        resources: t.req.resources,
                        constraints: &t.req.constraints,
                        policy: self.config.policy,
                        exclude: None,
                        now,
                    })
                });
                self.head = Some((job, target));
                // Other workers are no longer weighed against this one.
                self.epoch += 1;
                AfterPass::LeavesQueue
            }
            PlaceResult::FitsNoWorker => {
                self.unplaceable.push(job);
                AfterPass::LeavesQueue
            }
            PlaceResult::OverQuota => {
                if let Some(t) = self.get(job) {
                    let tenant = t.req.tenant.clone();
                    self.quotas.park(tenant, job);
                }
                AfterPass::LeavesQueue
            }
            PlaceResult::OverConcurrency => {
                if let Some(c) = self.get(job).and_then(|t| t.req.concurrency.clone()) {
                    self.keys.park(c.key, job);
                }
                AfterPass::LeavesQueue
            }
        }
    }

    pub(super) fn try_place(
        &mut self,
        job: JobId,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> PlaceResult {
        let Some(&k) = self.index.get(&job) else {
            return PlaceResult::NotQueued;
        };
        let Some(t) = self.jobs.get(k) else {
            return PlaceResult::NotQueued;
        };
        if t.life.state != JobState::Queued {
            return PlaceResult::NotQueued;
        }
        let tenant = &t.req.tenant;
        let res = t.req.resources;
        if !self.quotas.admits(tenant, &res) {
            return PlaceResult::OverQuota;
        }
        if let Some(c) = &t.req.concurrency
            && !self.keys.admits(&c.key, c.limit)
        {
            return PlaceResult::OverConcurrency;
        }
        let exclude = match self.head {
            Some((h, w)) if h != job => w,
            _ => None,
        };
        let req = PlacementRequest {
            resources: res,
            constraints: &t.req.constraints,
            policy: self.config.policy,
            exclude,
            now,
        };
        let Some(worker) = self.cluster.place_and_reserve(&req, job) else {
            // Classify once per topology: explaining scans every worker.
            let topology = self.seen_topology;
            if t.classified_at == Some(topology) {
                return PlaceResult::NoRoomYet;
            }
            let shape = (res, t.req.constraints.clone());
            let why = match self.explained.get(&shape) {
                Some(why) => why.clone(),
                None => {
                    let why = self.cluster.explain(&req);
                    self.explained.insert(shape, why.clone());
                    why
                }
            };
            if let Some(tr) = self.jobs.get_mut(k) {
                tr.classified_at = Some(topology);
            }
            return match why {
                Some(r) if r.needs_new_workers() => PlaceResult::FitsNoWorker,
                _ => PlaceResult::NoRoomYet,
            };
        };
        let tenant = tenant.clone();
        self.add_usage(tenant, res);
        if let Some(tr) = self.jobs.get_mut(k) {
            tr.reserved = true;
        }
        self.hold_key(job);
        match self.apply(job, Transition::Assign { worker }, out) {
            Ok(JobState::Assigned { attempt, .. }) => {
                out.push(Action::Assign {
                    job,
                    worker,
                    attempt,
                });
                PlaceResult::Placed
            }
            _ => {
                self.cluster.release(worker, job);
                PlaceResult::NotQueued
            }
        }
    }
}
