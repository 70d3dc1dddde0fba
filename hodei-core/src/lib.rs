//! The vocabulary of the Hodei job scheduler.
//!
//! Every other Hodei crate speaks in these types:
//!
//! - ids: [`JobId`] (time-ordered), [`WorkerId`], [`TenantId`];
//! - [`Resources`], what a job needs and a worker offers, with checked
//!   arithmetic;
//! - [`JobSpec`], what a client submits, and [`JobSpec::validate`], which
//!   reports every problem with the field it concerns;
//! - [`Job`] and [`JobState`], the job's life as a state machine whose
//!   illegal transitions are errors and whose attempt number fences off
//!   stale reports;
//! - [`Event`] and the [`Bus`] that broadcasts them;
//! - the [`Masker`], which hides secret values in log output, also when a
//!   value is split across chunks;
//! - the [`Clock`], so time can be virtual in tests and simulations.
//!
//! ```
//! use hodei_core::{Job, JobId, JobSpec, JobState, Timestamp, Transition, WorkerId};
//!
//! let mut spec = JobSpec::argv(["cargo", "test"]);
//! spec.retry.max_attempts = 3;
//! spec.validate().expect("a valid spec");
//!
//! let mut job = Job::new(JobId::new(), spec, Timestamp(0));
//! let worker = WorkerId::new();
//! job.transition(Transition::Assign { worker }, Timestamp(1)).unwrap();
//! assert_eq!(job.state, JobState::Assigned { worker, attempt: 1 });
//! // A report about another attempt is refused.
//! assert!(job.transition(Transition::Start { attempt: 2 }, Timestamp(2)).is_err());
//! ```
#![deny(missing_docs)]

mod bus;
mod clock;
mod event;
mod id;
mod job;
mod masker;
mod pipeline;
mod resources;
mod spec;

pub use bus::{Bus, RecvError, Subscriber, TryRecvError};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use event::{Event, LogStream};
pub use id::{IdError, JobId, TenantId, WorkerId};
pub use job::{ExitStatus, Job, JobState, Lifecycle, Transition, TransitionError};
pub use masker::{MASK, MaskStream, Masker, MaskerError};
pub use pipeline::{
    CompensationSpec, Condition, MAX_OUTPUT_BYTES, MAX_STEPS, PipelineGraph, PipelineSpec,
    StepSpec, cycles, output_prefix, output_variable, parse_outputs,
};
pub use resources::Resources;
pub use spec::{
    Backoff, Command, ConcurrencyLimit, Constraint, ConstraintOp, FieldError, JobSpec,
    MAX_CONCURRENCY_KEY, MAX_CONCURRENCY_LIMIT, MAX_ERRORS_TEXT, MAX_TIMEOUT, MIN_SECRET_LEN,
    PRIORITY_LEVELS, RetryPolicy, Secret, SecretDelivery, SpecErrors, label_key_problem,
    label_value_problem,
};
