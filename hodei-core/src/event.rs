//! [`Event`]: what the rest of the system learns about jobs and workers.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::id::{JobId, TenantId, WorkerId};
use crate::job::JobState;

/// Something that happened, published on the [`Bus`](crate::Bus).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Event {
    /// A job was accepted (and is durable, where a store is in use).
    JobSubmitted {
        /// The job.
        job: JobId,
        /// Its tenant.
        tenant: TenantId,
        /// When.
        at: Timestamp,
    },
    /// A job changed state.
    JobChanged {
        /// The job.
        job: JobId,
        /// Its tenant.
        tenant: TenantId,
        /// The state it left.
        from: JobState,
        /// The state it entered.
        to: JobState,
        /// The job's attempt after the change.
        attempt: u32,
        /// When.
        at: Timestamp,
    },
    /// Log output of a job was stored.
    LogAppended {
        /// The job.
        job: JobId,
        /// The attempt that wrote it.
        attempt: u32,
        /// The batch's sequence number.
        seq: u64,
        /// Bytes in the batch.
        bytes: u64,
    },
    /// A worker registered (or re-registered).
    WorkerJoined {
        /// The worker.
        worker: WorkerId,
        /// When.
        at: Timestamp,
    },
    /// A worker stopped taking new jobs.
    WorkerDraining {
        /// The worker.
        worker: WorkerId,
        /// When.
        at: Timestamp,
    },
    /// A worker's heartbeats stopped; its jobs are lost.
    WorkerLost {
        /// The worker.
        worker: WorkerId,
        /// When.
        at: Timestamp,
    },
    /// A worker left cleanly.
    WorkerLeft {
        /// The worker.
        worker: WorkerId,
        /// When.
        at: Timestamp,
    },
}

impl Event {
    /// The job the event concerns, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::JobSubmitted { job, .. }
            | Event::JobChanged { job, .. }
            | Event::LogAppended { job, .. } => Some(*job),
            _ => None,
        }
    }
}

/// Which output stream a piece of a job's log came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A note from the system (the agent or the server), not the job:
    /// could not start, killed at its timeout, and so on.
    System,
}
