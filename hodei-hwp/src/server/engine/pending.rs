//! What a round gathers before it is stored, and what is left to do
//! once its commit lands: the data the engine task keeps and
//! `round.rs` acts on.

use std::future::Future;
use std::pin::Pin;

use futures::stream::FuturesOrdered;
use hodei_core::{Job, JobId, JobState, TenantId, Timestamp};
use hodei_sched::Action;
use hodei_store::{AttemptPatch, Outcomes, StoreError};

use super::{EngineError, Reply, SubmitReply};

/// A submission the scheduler took in this round, stored with it.
pub(super) struct NewJob {
    pub(super) job: Job,
    /// The state it entered in (before the round's changes).
    pub(super) entered: JobState,
    pub(super) reply: SubmitReply,
}

/// What a round gathers before it is stored.
#[derive(Default)]
pub(super) struct Round {
    pub(super) actions: Vec<Action>,
    pub(super) new_jobs: Vec<NewJob>,
    pub(super) patches: Vec<(JobId, u32, AttemptPatch)>,
    pub(super) replies: Vec<(Reply, Result<(), EngineError>)>,
    /// Records for the audit chain, stored with the round's writes.
    pub(super) audit: Vec<hodei_store::AuditEntry>,
}

impl Round {
    pub(super) fn is_empty(&self) -> bool {
        self.actions.is_empty()
            && self.new_jobs.is_empty()
            && self.patches.is_empty()
            && self.replies.is_empty()
            && self.audit.is_empty()
    }
}

/// A new job in a queued batch.
pub(super) struct Inserting {
    /// Its write in the batch.
    pub(super) write: usize,
    pub(super) id: JobId,
    /// Its (tenant, idempotency key), held in flight until it lands.
    pub(super) key: Option<(TenantId, String)>,
    pub(super) entered: JobState,
    pub(super) reply: SubmitReply,
}

/// A round queued for the store: what is left to do once it lands.
pub(super) struct Awaiting {
    pub(super) actions: Vec<Action>,
    pub(super) inserts: Vec<Inserting>,
    /// Each stored state change: its write in the batch and its job.
    pub(super) transitions: Vec<(usize, JobId)>,
    pub(super) replies: Vec<(Reply, Result<(), EngineError>)>,
    pub(super) now: Timestamp,
}

/// A round whose commit ended, well or not.
pub(super) struct Landed {
    pub(super) round: Awaiting,
    pub(super) outcome: Result<Outcomes, StoreError>,
}

/// Rounds in flight, landing in the order they were queued.
pub(super) type InFlight = FuturesOrdered<Pin<Box<dyn Future<Output = Landed> + Send>>>;
