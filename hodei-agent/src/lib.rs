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

mod batch;
mod exec;
mod secrets;

pub use batch::{Batch, BatchConfig, batch};
pub use exec::{ExecConfig, Finished, Output, Stream, run};
pub use secrets::secret_forms;
