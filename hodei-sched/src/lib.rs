//! The Hodei scheduling engine.
//!
//! Each piece is public and usable on its own:
//!
//! - [`PriorityQueue`]: a lock-free MPMC queue with fixed priority levels,
//!   FIFO within a level.
//! - [`Wfq`]: weighted fair queuing across flows (tenants), with a proven
//!   bound on unfairness and no credit banked by idle flows.
//! - [`ClusterState`]: workers, labels, capacity, reservations that can never
//!   over-commit, telemetry and liveness, with an index for fast placement.
//! - Placement ([`Policy`], [`PlacementRequest`], [`Rejection`]): filter,
//!   then score, and say why nothing fits.
//! - [`Scheduler`]: all of the above, driven by events and a [`Clock`].
//!
//! ```
//! use std::sync::Arc;
//! use hodei_core::{JobId, JobSpec, ManualClock, Resources, Timestamp, WorkerId};
//! use hodei_sched::{Action, ClusterState, JobRequest, Scheduler, SchedulerConfig, WorkerSpec};
//!
//! let clock = ManualClock::new(Timestamp(0));
//! let cluster = Arc::new(ClusterState::default());
//! let mut sched = Scheduler::new(SchedulerConfig::default(), cluster, clock);
//! let worker = WorkerId::new();
//! sched
//!     .worker_joined(WorkerSpec { id: worker, labels: Default::default(), capacity: Resources::new(4000, 8192, 0) })
//!     .unwrap();
//! let job = JobId::new();
//! let actions = sched.submit(JobRequest::from_spec(job, &JobSpec::argv(["echo", "hi"]))).unwrap();
//! assert!(actions.contains(&Action::Assign { job, worker, attempt: 1 }));
//! ```
//!
//! [`Clock`]: hodei_core::Clock
#![deny(missing_docs)]

mod cluster;
mod error;
mod pipeline;
mod placement;
mod queue;
mod schedule;
mod scheduler;
mod wfq;

pub use cluster::{
    ClusterConfig, ClusterState, Labels, LostWorker, Telemetry, WorkerSnapshot, WorkerSpec,
    WorkerStatus,
};
pub use error::{ClusterError, SchedError};
pub use pipeline::{Decision, PipelineRun, PipelineState, StepOutcome, StepState};
pub use placement::{PlacementRequest, Policy, Rejection};
pub use queue::{MAX_LEVELS, PriorityQueue};
pub use schedule::{Cron, MAX_CATCH_UP, ON_TIME_MS, Overlap, ScheduleSpec, rfc3339};
pub use scheduler::{
    Action, AttemptOutcome, JobRequest, Scheduler, SchedulerConfig, SchedulerStats,
};
pub use wfq::{Dequeued, FLOW_LEVELS, Wfq};
