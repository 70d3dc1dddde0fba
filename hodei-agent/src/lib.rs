//! The Hodei worker agent.
//!
//! Connects to a Hodei server over gRPC, runs shell jobs in their own
//! process groups, streams their logs with secrets masked, reports
//! resources, survives disconnects and drains cleanly on shutdown.
//!
//! Available now: [`run`], which runs one attempt of a job as real
//! processes with masked output, timeouts, cancellation and clean-up of
//! every process the job started; [`batch`], which cuts that output into
//! sequence-numbered batches by size, line count and age; and
//! [`secret_forms`], the encodings of a secret that are masked along with
//! it.
#![deny(missing_docs)]

mod agent;
mod batch;
mod cap;
mod contain;
mod exec;
mod identity;
mod outbox;
mod pty;
mod secrets;
mod settings;
mod telemetry;

pub use agent::{
    AgentConfig, AgentError, Report, Shutdown, default_state_dir, host_name, run_agent,
};
pub use batch::{Batch, BatchConfig, batch};
pub use cap::cap;
pub use contain::{Containment, ContainmentMode};
pub use exec::{ExecConfig, Finished, Output, run};
pub use hodei_core::LogStream;
pub use identity::{IDENTITY_FILE, Identity, IdentityError, StateLock, lock_state_dir};
pub use secrets::secret_forms;
pub use settings::{AgentSettings, SettingsError};
pub use telemetry::{Reading, Sampler, detect_capacity};
