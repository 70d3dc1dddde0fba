//! Durable state for the Hodei job scheduler.
//!
//! The `Store` trait, an embedded redb store that batches writes from many
//! tasks into one transaction (group commit), and an in-memory store for
//! tests and hosts that want no persistence.
#![deny(missing_docs)]
