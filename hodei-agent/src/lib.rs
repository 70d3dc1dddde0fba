//! The Hodei worker agent.
//!
//! Connects to a Hodei server over gRPC, runs shell jobs in their own
//! process groups, streams their logs with secrets masked, reports
//! resources, survives disconnects and drains cleanly on shutdown.
#![deny(missing_docs)]
