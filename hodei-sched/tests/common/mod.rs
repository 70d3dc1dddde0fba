//! Helpers shared by the scheduler's test binaries.

use hodei_core::{JobId, WorkerId};
use hodei_sched::Action;

/// The assignments among `actions`: (job, worker, attempt).
pub(crate) fn assigns(actions: &[Action]) -> Vec<(JobId, WorkerId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Assign {
                job,
                worker,
                attempt,
            } => Some((*job, *worker, *attempt)),
            _ => None,
        })
        .collect()
}
