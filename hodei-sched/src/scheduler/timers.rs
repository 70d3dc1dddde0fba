//! Timers: retry backoffs, attempt timeouts, re-attach deadlines, and
//! worker liveness, all on the scheduler's clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hodei_core::{Clock, JobId, JobState, Timestamp, Transition};

use super::{Action, Scheduler};

/// A deadline the scheduler set for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A job's retry backoff ends.
    Retry(JobId),
    /// An attempt's timeout (plus grace) passes without a report.
    Timeout(JobId, u32),
    /// A recovered attempt's worker has not re-attached it in time.
    Reattach(JobId, u32),
}

/// Every deadline, earliest first, and the next worker liveness check.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Timestamp, Timer)>>,
    liveness_at: Option<Timestamp>,
}

impl Timers {
    pub(super) fn set(&mut self, at: Timestamp, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest timer due at `now`, taken off.
    fn pop_due(&mut self, now: Timestamp) -> Option<Timer> {
        let Reverse((at, timer)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some(timer)
    }

    /// Liveness must be checked at `at` at the latest.
    pub(super) fn check_liveness_by(&mut self, at: Timestamp) {
        self.liveness_at = Some(self.liveness_at.map_or(at, |t| t.min(at)));
    }

    fn next(&self) -> Option<Timestamp> {
        let timer = self.heap.peek().map(|Reverse((t, _))| *t);
        match (timer, self.liveness_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<C: Clock> Scheduler<C> {
    /// When [`tick`](Scheduler::tick) next has work: the earliest retry,
    /// timeout or re-attach deadline, or worker heartbeat expiry.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    /// Handles every timer due at the clock's time and expires workers
    /// whose heartbeats stopped, then places what it can.
    pub fn tick(&mut self) -> Vec<Action> {
        let now = self.clock.now();
        let mut out = Vec::new();
        while let Some(timer) = self.timers.pop_due(now) {
            self.fire(timer, &mut out);
        }
        if self.timers.liveness_at.is_some_and(|t| t <= now) {
            for lost in self.cluster.expire(now) {
                for job in lost.jobs {
                    // The cluster already released the reservations.
                    if let Some(t) = self.get_mut(job) {
                        t.reserved = false;
                    }
                    self.lose(lost.id, job, &mut out);
                }
            }
            self.timers.liveness_at = self.cluster.next_expiry();
            self.capacity_freed = true;
        }
        self.dispatch(&mut out);
        out
    }

    pub(super) fn fire(&mut self, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::Retry(job) => {
                let ready = self.get_mut(job).is_some_and(|t| {
                    let due = t.retrying;
                    t.retrying = false;
                    due
                });
                if ready {
                    self.retrying -= 1;
                }
                if ready && self.apply(job, Transition::Retry, out).is_ok() {
                    self.enqueue(job);
                }
            }
            Timer::Timeout(job, attempt) => {
                let Some(t) = self.get(job) else { return };
                if !matches!(t.life.state, JobState::Running { attempt: a, .. } if a == attempt) {
                    return;
                }
                if let Some(worker) = t.life.state.worker() {
                    out.push(Action::Stop {
                        job,
                        worker,
                        attempt,
                    });
                    self.hand_to_stopping(job, worker);
                }
                let _ = self.end_attempt(job, Transition::TimeOut { attempt }, out);
            }
            Timer::Reattach(job, attempt) => {
                let Some(t) = self.get(job) else { return };
                if t.reserved || t.life.attempt != attempt || !t.life.state.is_active() {
                    return;
                }
                let _ = self.end_attempt(job, Transition::Lose { attempt }, out);
            }
        }
    }
}
