//! The errors of this crate.

use hodei_core::{JobId, Resources, TransitionError, WorkerId};

/// Why a cluster-state operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No worker has this id.
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerId),
    /// The worker was declared lost; it must register again.
    #[error("worker {0} was declared lost; it must register again")]
    WorkerLost(WorkerId),
    /// The worker is draining or lost and takes no new jobs.
    #[error("worker {0} is not ready for new jobs")]
    NotReady(WorkerId),
    /// A worker registered with no capacity at all.
    #[error("worker {0} offers no capacity")]
    ZeroCapacity(WorkerId),
    /// The reservation would over-commit the worker.
    #[error("worker {worker} has {free} free, {requested} requested")]
    Insufficient {
        /// The worker.
        worker: WorkerId,
        /// What was asked.
        requested: Resources,
        /// What it has free.
        free: Resources,
    },
    /// The job already holds a reservation on the worker.
    #[error("job {job} already holds a reservation on worker {worker}")]
    AlreadyReserved {
        /// The worker.
        worker: WorkerId,
        /// The job.
        job: JobId,
    },
}

/// Why a scheduler operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedError {
    /// A job with this id is already known to the scheduler.
    #[error("job {0} is already scheduled")]
    Duplicate(JobId),
    /// The scheduler does not track this job (never submitted, or finished).
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// A dependency is neither live in the scheduler nor recorded as
    /// finished.
    #[error("job {job} depends on unknown job {dependency}")]
    UnknownDependency {
        /// The job submitted.
        job: JobId,
        /// The dependency not found.
        dependency: JobId,
    },
    /// The report names a worker other than the one holding the job.
    #[error("job {job} is not held by worker {worker}")]
    WrongWorker {
        /// The job.
        job: JobId,
        /// The worker that reported.
        worker: WorkerId,
    },
    /// The job state machine refused the change.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The cluster state refused the change.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}
