//! Dependencies: what a job waits on, and the finished jobs remembered so
//! later submissions can depend on them.

use std::collections::VecDeque;

use hodei_core::{Clock, JobId};
use rustc_hash::FxHashMap as HashMap;

use super::Scheduler;
use crate::error::SchedError;

/// Finished jobs and whether each succeeded, the most recent `limit`.
pub(super) struct Finished {
    outcome: HashMap<JobId, bool>,
    order: VecDeque<JobId>,
    limit: usize,
}

impl Finished {
    pub(super) fn new(limit: usize) -> Self {
        Finished {
            outcome: HashMap::default(),
            order: VecDeque::new(),
            limit,
        }
    }

    fn record(&mut self, job: JobId, succeeded: bool) {
        if self.outcome.insert(job, succeeded).is_none() {
            self.order.push_back(job);
            while self.order.len() > self.limit {
                if let Some(old) = self.order.pop_front() {
                    self.outcome.remove(&old);
                }
            }
        }
    }
}

/// Where a new job stands with its dependencies.
pub(super) struct Resolved {
    /// Dependencies still tracked (not final yet).
    pub(super) waiting_on: usize,
    /// A dependency already failed: the job can never run.
    pub(super) failed: bool,
}

impl<C: Clock> Scheduler<C> {
    /// Records that a job not tracked here finished, so later submissions
    /// may depend on it (for instance, from the store after a restart).
    pub fn record_finished(&mut self, job: JobId, succeeded: bool) {
        self.finished.record(job, succeeded);
    }

    /// How job `id` stands with `deps`, changing nothing.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownDependency`] for a dependency neither tracked
    /// nor remembered as finished.
    pub(super) fn resolve_dependencies(
        &self,
        id: JobId,
        deps: &[JobId],
    ) -> Result<Resolved, SchedError> {
        let mut r = Resolved {
            waiting_on: 0,
            failed: false,
        };
        for dep in deps {
            if self.index.contains_key(dep) {
                r.waiting_on += 1;
                continue;
            }
            match self.finished.outcome.get(dep) {
                Some(true) => {}
                Some(false) => r.failed = true,
                None => {
                    return Err(SchedError::UnknownDependency {
                        job: id,
                        dependency: *dep,
                    });
                }
            }
        }
        Ok(r)
    }
}
