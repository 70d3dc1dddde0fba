//! [`Batch`]: writes applied together, and the [`Commit`] that resolves once
//! they are durable.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hodei_core::{ExitStatus, Job, JobId, JobState, Timestamp, Transition};
use tokio::sync::oneshot;

use crate::codec::encode;
use crate::error::StoreError;
use crate::model::{AttemptRecord, Inserted};
use crate::ops::{Reply, WriteOp};

/// Writes applied in order, in one transaction, as one commit.
///
/// Each write keeps its own outcome: a refused write (a compare-and-set
/// that finds another state, an unknown job) fails alone and writes
/// nothing, and the rest of the batch still lands. A storage failure fails
/// the whole batch, and nothing of it is written.
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<WriteOp>,
}

/// A change to a stored attempt record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptPatch {
    /// The attempt started.
    Started {
        /// When.
        at: Timestamp,
    },
    /// The attempt ended.
    Finished {
        /// When.
        at: Timestamp,
        /// How its process ended.
        exit: ExitStatus,
        /// Its peak memory, MiB.
        peak_memory_mb: u64,
    },
}

impl AttemptPatch {
    pub(crate) fn apply(self, r: &mut AttemptRecord) {
        match self {
            AttemptPatch::Started { at } => r.started_at = Some(at),
            AttemptPatch::Finished {
                at,
                exit,
                peak_memory_mb,
            } => {
                r.finished_at = Some(at);
                r.exit = Some(exit);
                r.peak_memory_mb = Some(peak_memory_mb);
            }
        }
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Writes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch holds no write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Stores a new job, in whatever state it is in (a job placed before
    /// it was first stored goes in already assigned), with the idempotency
    /// rule of [`Store::insert_job`](crate::Store::insert_job). Returns the
    /// write's index in the batch.
    ///
    /// # Errors
    ///
    /// [`StoreError::Codec`] if the job cannot be encoded.
    pub fn insert_job(&mut self, job: Job) -> Result<usize, StoreError> {
        let bytes = encode("job", &job)?;
        Ok(self.push(WriteOp::Insert(Box::new(job), bytes)))
    }

    /// A compare-and-set transition, as
    /// [`Store::transition`](crate::Store::transition). Returns the write's
    /// index in the batch.
    pub fn transition(
        &mut self,
        id: JobId,
        expected: JobState,
        attempt: u32,
        t: Transition,
        now: Timestamp,
    ) -> usize {
        self.push(WriteOp::Transition {
            id,
            expected,
            attempt,
            t,
            now,
        })
    }

    /// Stores (or replaces) an attempt record. Returns the write's index.
    pub fn record_attempt(&mut self, record: AttemptRecord) -> usize {
        self.push(WriteOp::Attempt(record))
    }

    /// Changes a stored attempt record in place; an attempt with no record
    /// is left as it is. Returns the write's index.
    pub fn patch_attempt(&mut self, job: JobId, attempt: u32, patch: AttemptPatch) -> usize {
        self.push(WriteOp::Patch {
            job,
            attempt,
            patch,
        })
    }

    fn push(&mut self, op: WriteOp) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Puts (`Some`) or removes (`None`) a keyed record, as
    /// [`Store::put_record`](crate::Store::put_record), in the same commit
    /// as the rest. Returns the write's index.
    pub fn put_record(&mut self, kind: &str, id: &str, value: Option<Vec<u8>>) -> usize {
        self.push(WriteOp::Record {
            table: crate::ops::Table::Records,
            kind: kind.to_string(),
            id: id.to_string(),
            value,
        })
    }

    /// Appends `entry` to the audit chain, in the same commit as the rest
    /// (the call it records and its record land together). Returns its
    /// place.
    pub fn append_audit(&mut self, entry: crate::AuditEntry) -> usize {
        self.push(WriteOp::Audit(entry))
    }
}

/// What one write of a [`Batch`] returned.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Written {
    /// [`Batch::insert_job`]: the job stored, or the one already stored
    /// under its idempotency key.
    Inserted(Inserted),
    /// [`Batch::transition`]: the job as stored after it.
    Job(Job),
    /// [`Batch::append_audit`]: the record as chained.
    Audit(crate::AuditRecord),
    /// An attempt record was written or patched.
    Done,
}

impl Written {
    fn from_reply(r: Reply) -> Written {
        match r {
            Reply::Inserted(i) => Written::Inserted(*i),
            Reply::Job(j) => Written::Job(*j),
            Reply::Audit(a) => Written::Audit(*a),
            _ => Written::Done,
        }
    }
}

/// Each write's outcome, in the batch's order.
pub type Outcomes = Vec<Result<Written, StoreError>>;

/// A write on its way to the disk, as a backend answers it.
pub(crate) enum Pending {
    /// Already applied (a store with nothing to wait for).
    Ready(Result<Reply, StoreError>),
    /// Applied and acknowledged by a writer later.
    Waiting(oneshot::Receiver<Result<Reply, StoreError>>),
}

impl Pending {
    pub(crate) async fn wait(self) -> Result<Reply, StoreError> {
        match self {
            Pending::Ready(r) => r,
            Pending::Waiting(rx) => rx.await.map_err(|_| StoreError::Closed)?,
        }
    }
}

/// A queued [`Batch`]: resolves to each write's outcome once the batch is
/// durable.
///
/// # Cancel safety
///
/// Dropping it does not withdraw the batch: it is written all the same;
/// only its outcome is lost.
#[derive(Debug)]
#[must_use = "a commit says nothing until it is awaited"]
pub struct Commit(CommitState);

#[derive(Debug)]
enum CommitState {
    Ready(Option<Result<Reply, StoreError>>),
    Waiting(oneshot::Receiver<Result<Reply, StoreError>>),
}

impl Commit {
    pub(crate) fn new(p: Pending) -> Self {
        Commit(match p {
            Pending::Ready(r) => CommitState::Ready(Some(r)),
            Pending::Waiting(rx) => CommitState::Waiting(rx),
        })
    }
}

impl Future for Commit {
    type Output = Result<Outcomes, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let reply = match &mut self.0 {
            CommitState::Ready(r) => r.take().unwrap_or(Err(StoreError::Closed)),
            CommitState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.unwrap_or(Err(StoreError::Closed)),
            },
        };
        Poll::Ready(match reply {
            Ok(Reply::Batch(outcomes)) => Ok(outcomes
                .into_iter()
                .map(|r| r.map(Written::from_reply))
                .collect()),
            Ok(other) => Err(crate::ops::unexpected(other)),
            Err(e) => Err(e),
        })
    }
}
