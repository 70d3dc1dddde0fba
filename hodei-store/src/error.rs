//! [`StoreError`].

use std::path::PathBuf;
use std::sync::Arc;

use hodei_core::{JobId, JobState, TransitionError};

/// The error underneath a store failure. Shared, because one failed commit
/// fails every write in it with the same cause.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A cause that is only a description.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Reason(String);

/// Why a store operation failed.
///
/// Failures that come from below (the database, the file system, the
/// codec) keep that error as their [`source`](std::error::Error::source).
/// Cloning shares the source: one failed commit fails each of its writes
/// with the same error.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened as a Hodei store: corrupt, foreign, or
    /// unreadable.
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: Source,
    },
    /// Another process (or another store in this one) holds the file.
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer, incompatible version.
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Highest version understood.
        supported: u32,
    },
    /// The database's schema was written by a newer, incompatible
    /// version.
    UnsupportedSchema {
        /// Version found.
        found: u32,
        /// Highest version understood.
        supported: u32,
    },
    /// Another server has led since this store's leadership began: its
    /// writes are refused (the lease's epoch moved on), and nothing of the
    /// refused commit was written.
    Fenced {
        /// The epoch this store writes for.
        epoch: i64,
        /// The epoch the database holds.
        current: i64,
    },
    /// No job has this id.
    UnknownJob(JobId),
    /// The job is not in the state or attempt the caller expected.
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
    Duplicate(JobId),
    /// The state machine refused the transition.
    Transition(TransitionError),
    /// A record could not be encoded or decoded.
    Codec {
        /// Which record.
        what: String,
        /// What went wrong.
        source: Source,
    },
    /// The file's contents are damaged: the database failed while reading
    /// or writing them.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The underlying database or file failed.
    Storage(Source),
    /// The store is shutting down or its writer stopped.
    Closed,
}

impl StoreError {
    /// A storage failure caused by `e`.
    pub fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Storage(Arc::new(e))
    }

    /// A storage failure known only by its description.
    pub fn storage_message(message: impl Into<String>) -> Self {
        StoreError::Storage(Arc::new(Reason(message.into())))
    }

    pub(crate) fn open(path: PathBuf, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Open {
            path,
            source: Arc::new(e),
        }
    }

    pub(crate) fn open_message(path: PathBuf, message: impl Into<String>) -> Self {
        StoreError::Open {
            path,
            source: Arc::new(Reason(message.into())),
        }
    }

    pub(crate) fn codec(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Codec {
            what: what.to_string(),
            source: Arc::new(e),
        }
    }

    pub(crate) fn codec_message(what: &str, message: impl Into<String>) -> Self {
        StoreError::Codec {
            what: what.to_string(),
            source: Arc::new(Reason(message.into())),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open { path, source } => {
                write!(f, "cannot open store {}: {source}", path.display())
            }
            StoreError::Locked { path } => {
                write!(
                    f,
                    "store {} is already open in another process",
                    path.display()
                )
            }
            StoreError::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "store {} has format version {found}; this build reads up to {supported}",
                path.display()
            ),
            StoreError::UnsupportedSchema { found, supported } => write!(
                f,
                "the database has Hodei schema version {found}; this build reads up to {supported} (upgrade Hodei, do not downgrade the database)"
            ),
            StoreError::Fenced { epoch, current } => write!(
                f,
                "this server led in epoch {epoch} but the database is at epoch {current}: another server leads, nothing was written"
            ),
            StoreError::UnknownJob(id) => write!(f, "unknown job {id}"),
            StoreError::Conflict {
                job,
                expected,
                expected_attempt,
                found,
                found_attempt,
            } => write!(
                f,
                "job {job}: expected {expected} attempt {expected_attempt}, found {found} attempt {found_attempt}"
            ),
            StoreError::Duplicate(id) => write!(f, "job {id} already exists"),
            StoreError::Transition(e) => std::fmt::Display::fmt(e, f),
            StoreError::Codec { what, source } => write!(f, "record {what}: {source}"),
            StoreError::Corrupt { path, reason } => {
                write!(f, "store {} is corrupt: {reason}", path.display())
            }
            StoreError::Storage(source) => write!(f, "storage: {source}"),
            StoreError::Closed => f.write_str("store closed"),
        }
    }
}

/// The source is the error underneath itself (the redb or I/O error, not
/// the shared handle to it), so callers can downcast it.
impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Open { source, .. }
            | StoreError::Codec { source, .. }
            | StoreError::Storage(source) => Some(&**source),
            StoreError::Transition(e) => e.source(),
            _ => None,
        }
    }
}

impl From<TransitionError> for StoreError {
    fn from(e: TransitionError) -> Self {
        StoreError::Transition(e)
    }
}
