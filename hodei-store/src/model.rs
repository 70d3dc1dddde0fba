//! The records a store keeps besides jobs, and the shapes of its answers.

use hodei_core::{ExitStatus, Job, JobId, JobState, LogStream, TenantId, Timestamp, WorkerId};
use serde::{Deserialize, Serialize};

/// The result of [`Store::insert_job`](crate::Store::insert_job).
#[derive(Clone, Debug, PartialEq)]
pub enum Inserted {
    /// The job was stored.
    Created(Job),
    /// A job with the same tenant and idempotency key already existed; it is
    /// returned and nothing was written.
    Existing(Job),
}

impl Inserted {
    /// The job, new or existing.
    pub fn job(&self) -> &Job {
        match self {
            Inserted::Created(j) | Inserted::Existing(j) => j,
        }
    }

    /// True if this call created it.
    pub fn is_new(&self) -> bool {
        matches!(self, Inserted::Created(_))
    }
}

/// The kinds of job state, for filtering and indexing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateKind {
    /// Pending.
    Pending,
    /// Queued.
    Queued,
    /// Assigned.
    Assigned,
    /// Running.
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
    /// TimedOut.
    TimedOut,
    /// Lost.
    Lost,
}

impl StateKind {
    /// Every kind, in life order.
    pub const ALL: [StateKind; 9] = [
        StateKind::Pending,
        StateKind::Queued,
        StateKind::Assigned,
        StateKind::Running,
        StateKind::Succeeded,
        StateKind::Failed,
        StateKind::Cancelled,
        StateKind::TimedOut,
        StateKind::Lost,
    ];

    /// The kind of a state.
    pub fn of(s: &JobState) -> Self {
        match s {
            JobState::Pending => StateKind::Pending,
            JobState::Queued => StateKind::Queued,
            JobState::Assigned { .. } => StateKind::Assigned,
            JobState::Running { .. } => StateKind::Running,
            JobState::Succeeded => StateKind::Succeeded,
            JobState::Failed { .. } => StateKind::Failed,
            JobState::Cancelled => StateKind::Cancelled,
            JobState::TimedOut => StateKind::TimedOut,
            JobState::Lost => StateKind::Lost,
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8
    }
}

/// What [`Store::list_jobs`](crate::Store::list_jobs) returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this kind of state.
    pub state: Option<StateKind>,
    /// Only this tenant's jobs.
    pub tenant: Option<TenantId>,
    /// Start after this job (the previous page's `next`).
    pub after: Option<JobId>,
    /// At most this many (capped at 1000; 0 means 100).
    pub limit: usize,
}

impl JobFilter {
    pub(crate) fn effective_limit(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(1000),
        }
    }

    pub(crate) fn matches(&self, job: &Job) -> bool {
        self.state.is_none_or(|s| s == StateKind::of(&job.state))
            && self.tenant.as_ref().is_none_or(|t| *t == job.spec.tenant)
            && self.after.is_none_or(|a| job.id > a)
    }
}

/// One page of jobs, in id (submission) order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Pass as `after` to get the next page; `None` at the end. A page
    /// may hold fewer jobs than asked (even none) and still have a next
    /// one: a filter that few jobs match stops after looking at 10,000
    /// records, so that no page reads a whole index.
    pub next: Option<JobId>,
}

/// One attempt's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The job.
    pub job: JobId,
    /// The attempt, 1-based.
    pub attempt: u32,
    /// Where it ran.
    pub worker: WorkerId,
    /// When it was assigned.
    pub assigned_at: Timestamp,
    /// When it started, if it did.
    pub started_at: Option<Timestamp>,
    /// When it ended, if it did.
    pub finished_at: Option<Timestamp>,
    /// How the process ended, if it did.
    pub exit: Option<ExitStatus>,
    /// Peak memory of the process, MiB, if reported.
    pub peak_memory_mb: Option<u64>,
}

/// A batch of a job's output, as sent by its agent (already masked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The stream.
    pub stream: LogStream,
    /// When its first line was read.
    pub at: Timestamp,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The result of [`Store::append_log`](crate::Store::append_log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogAppend {
    /// Stored.
    Stored,
    /// This (job, attempt, seq) was already stored: nothing written.
    Duplicate,
    /// The job's log reached its cap: the chunk was dropped and counted.
    Truncated,
}

/// Where a log read starts: an attempt and a sequence number in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogCursor {
    /// The attempt.
    pub attempt: u32,
    /// The sequence number within the attempt.
    pub seq: u64,
}

/// A stored chunk with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position.
    pub cursor: LogCursor,
    /// The chunk.
    pub chunk: LogChunk,
}

/// Chunks read back, in (attempt, seq) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogPage {
    /// The chunks.
    pub entries: Vec<LogEntry>,
    /// Bytes dropped because the job's log reached its cap: when non-zero,
    /// the log is incomplete and readers should say so.
    pub truncated_bytes: u64,
}

/// Per-job log accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogMeta {
    pub(crate) stored_bytes: u64,
    pub(crate) dropped_bytes: u64,
}
