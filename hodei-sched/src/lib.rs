//! The Hodei scheduling engine.
//!
//! A lock-free priority queue, weighted fair queuing across tenants, the
//! cluster state of workers, placement policies and the event-driven
//! scheduler that composes them. Each piece is public and usable alone.
#![deny(missing_docs)]
