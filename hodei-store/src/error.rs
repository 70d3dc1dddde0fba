//! [`StoreError`].

use std::path::PathBuf;

use hodei_core::{JobId, JobState, TransitionError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened as a Hodei store: corrupt, foreign, or
    /// unreadable.
    #[error("cannot open store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Another process (or another store in this one) holds the file.
    #[error("store {path} is already open in another process")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer, incompatible version.
    #[error("store {path} has format version {found}; this build reads up to {supported}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Highest version understood.
        supported: u32,
    },
    /// No job has this id.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// The job is not in the state or attempt the caller expected.
    #[error(
        "job {job}: expected {expected} attempt {expected_attempt}, found {found} attempt {found_attempt}"
    )]
    Conflict {
        /// The job.
        job: JobId,
        /// The state expected.
        expected: JobState,
        /// The attempt expected.
        expected_attempt: u32,
        /// The state found.
        found: JobState,
        /// The attempt found.
        found_attempt: u32,
    },
    /// A job with this id already exists.
    #[error("job {0} already exists")]
    Duplicate(JobId),
    /// The state machine refused the transition.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A record could not be encoded or decoded.
    #[error("record {what}: {reason}")]
    Codec {
        /// Which record.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The file's contents are damaged: the database failed while reading
    /// or writing them.
    #[error("store {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The underlying database failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The store is shutting down or its writer stopped.
    #[error("store closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        StoreError::Storage(e.to_string())
    }
}
