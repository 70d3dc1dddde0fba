//! Durable state for the Hodei job scheduler.
//!
//! - [`Store`]: the trait a server writes through: idempotent job insert,
//!   compare-and-set state transitions, attempts, log chunks (idempotent by
//!   sequence number, capped per job), an audit hash chain, and the recovery
//!   scan of unfinished jobs.
//! - [`RedbStore`]: one redb file, the embedded default. Writes from many
//!   tasks are batched into one transaction (group commit), so one fsync
//!   covers many; a write's future resolves only once it is durable.
//! - [`MemStore`]: the same semantics in memory.
//! - [`pg::PgStore`] (feature `postgres`): the same semantics on PostgreSQL,
//!   for several servers sharing one database, one leading at a time
//!   ([`pg::Lease`]), every write fenced by the leader's epoch.
//!
//! All run the same operations over raw tables (PostgreSQL maps them onto
//! a relational schema), and one conformance test suite checks all three.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use hodei_core::{Job, JobId, JobSpec, Timestamp};
//! use hodei_store::{MemStore, Store, StoreConfig};
//!
//! let store = MemStore::new(StoreConfig::default());
//! let job = Job::new(JobId::new(), JobSpec::argv(["make"]), Timestamp(0));
//! store.insert_job(job.clone()).await.unwrap();
//! assert_eq!(store.recover().await.unwrap(), vec![job]);
//! # });
//! ```
#![deny(missing_docs)]

mod audit;
mod batch;
mod codec;
mod error;
mod mem;
mod model;
mod ops;
#[cfg(feature = "postgres")]
pub mod pg;
mod redb_store;
mod store;

pub use audit::{AuditEntry, AuditRecord, ChainCheck, verify_chain};
pub use batch::{AttemptPatch, Batch, Commit, Outcomes, Written};
pub use codec::{FORMAT_VERSION, decode, decode_job, encode};
pub use error::{Source, StoreError};
/// Re-exported: the one log-stream type lives in `hodei-core`.
pub use hodei_core::LogStream;
pub use mem::MemStore;
pub use model::{
    AttemptRecord, Inserted, JobFilter, LogAppend, LogChunk, LogCursor, LogEntry, LogPage, Page,
    StateKind,
};
pub use redb_store::{RedbStore, WriteStats};
pub use store::{Store, StoreConfig};
