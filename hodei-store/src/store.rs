//! The [`Store`] trait.

use std::future::Future;

use hodei_core::{Job, JobId, JobState, TenantId, Timestamp, Transition};

use crate::batch::{Batch, Commit, Pending};
use crate::codec;
use crate::ops::{self, Reply, Table, Tables, WriteOp};

use crate::audit::{AuditEntry, AuditRecord, ChainCheck};
use crate::error::StoreError;
use crate::model::{
    AttemptRecord, Inserted, JobFilter, LogAppend, LogChunk, LogCursor, LogPage, Page,
};

/// Settings shared by the stores.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The most log bytes kept per job; later chunks are dropped and
    /// counted.
    pub max_log_bytes_per_job: u64,
    /// The most writes committed in one transaction (1 = a commit per
    /// write, the baseline group commit is measured against).
    pub max_batch: usize,
    /// Writes waiting for the writer before submitters are made to wait.
    pub queue_depth: usize,
    /// How long the writer may wait for more writes when fewer are waiting
    /// than there were active writers at its last commit (those it just
    /// answered are about to send their next write). Zero disables the
    /// wait; a lone writer never waits.
    pub linger: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_log_bytes_per_job: 64 * 1024 * 1024,
            max_batch: 1024,
            queue_depth: 8192,
            linger: std::time::Duration::from_micros(200),
        }
    }
}

/// Durable state of a Hodei deployment.
///
/// Every write resolves only once it is durable (for stores that persist).
/// Implementations are shared between tasks (`&self`, `Send + Sync`).
///
/// The stores of this crate implement it through one private backend
/// trait (how a backend queues writes and reads its raw tables); the
/// meaning of every operation is written once above that.
///
/// # Errors
///
/// Any method may fail with [`StoreError::Storage`] or
/// [`StoreError::Corrupt`] (the disk or the file; the underlying error is
/// the source) and [`StoreError::Closed`] once the store shuts down.
/// Writes also refuse logically, writing nothing: [`StoreError::Conflict`]
/// (a compare-and-set found another state), [`StoreError::UnknownJob`],
/// [`StoreError::Transition`] (the state machine refused).
///
/// # Cancel safety
///
/// Dropping a write's future after it was queued does not withdraw the
/// write: it is applied all the same, and only its outcome is lost.
pub trait Store: Send + Sync + 'static {
    /// Stores a new job. If the job's spec has an idempotency key and the
    /// same tenant already stored a job with that key, returns that job
    /// instead and writes nothing.
    fn insert_job(&self, job: Job) -> impl Future<Output = Result<Inserted, StoreError>> + Send;

    /// Queues `batch` behind every write this store took before it, and
    /// returns once it is queued, not once it is durable: the [`Commit`]
    /// resolves then, with each write's outcome. A caller that queues
    /// batches one after another from one task may queue the next while
    /// the last is still being written (pipelining): they are applied in
    /// the order queued.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] if the store is shutting down.
    ///
    /// # Cancel safety
    ///
    /// Cancelled while it waits for room in the queue, the batch is not
    /// queued; once it returns, the batch is written whether or not the
    /// [`Commit`] is awaited.
    fn enqueue(&self, batch: Batch) -> impl Future<Output = Result<Commit, StoreError>> + Send;

    /// The job `tenant` stored under the idempotency key `key`, if any.
    fn find_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// A job by id.
    fn get_job(&self, id: JobId) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// Jobs matching `filter`, in id order, a page at a time.
    fn list_jobs(&self, filter: JobFilter)
    -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Applies `t` to job `id` if it is still in `expected` at attempt
    /// `attempt` (compare-and-set); returns the job as stored.
    fn transition(
        &self,
        id: JobId,
        expected: JobState,
        attempt: u32,
        t: Transition,
        now: Timestamp,
    ) -> impl Future<Output = Result<Job, StoreError>> + Send;

    /// Stores (or replaces) the record of one attempt.
    fn record_attempt(
        &self,
        record: AttemptRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A job's attempts, in order.
    fn attempts(
        &self,
        job: JobId,
    ) -> impl Future<Output = Result<Vec<AttemptRecord>, StoreError>> + Send;

    /// Appends a log chunk at (`job`, `attempt`, `seq`), idempotently.
    fn append_log(
        &self,
        job: JobId,
        attempt: u32,
        seq: u64,
        chunk: LogChunk,
    ) -> impl Future<Output = Result<LogAppend, StoreError>> + Send;

    /// Up to `limit` chunks of `job` from `from` on (inclusive).
    fn read_logs(
        &self,
        job: JobId,
        from: LogCursor,
        limit: usize,
    ) -> impl Future<Output = Result<LogPage, StoreError>> + Send;

    /// Appends to the audit chain.
    fn append_audit(
        &self,
        entry: AuditEntry,
    ) -> impl Future<Output = Result<AuditRecord, StoreError>> + Send;

    /// The audit records from `from` on, up to `limit`.
    fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;

    /// Checks the whole audit chain, including that none was cut off the
    /// end.
    fn verify_audit(&self) -> impl Future<Output = Result<ChainCheck, StoreError>> + Send;

    /// Every job not in a final state, in id order: what a restarting server
    /// must take over.
    fn recover(&self) -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;

    /// Stores a credential record (a hashed token, a revocation): `value`
    /// under `id` among records of `kind`, replacing what was there.
    /// Returns whether one was replaced. What the bytes mean is the
    /// server's business; the store keeps them durably.
    fn put_credential(
        &self,
        kind: &str,
        id: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes a credential record; returns whether there was one.
    fn remove_credential(
        &self,
        kind: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every credential record of `kind`, in id order.
    fn credentials(
        &self,
        kind: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;

    /// Stores a keyed record of the server's own (a pipeline, a schedule,
    /// a step's outputs): `value` under `id` among records of `kind`,
    /// replacing what was there. Returns whether one was replaced. Kept
    /// apart from credentials; what the bytes mean is the caller's
    /// business.
    fn put_record(
        &self,
        kind: &str,
        id: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes a keyed record; returns whether there was one.
    fn remove_record(
        &self,
        kind: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One keyed record, if stored.
    fn record(
        &self,
        kind: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Every keyed record of `kind`, in id order (bytewise).
    fn records(
        &self,
        kind: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
}

/// What a backend provides: how it queues a write for its tables and how
/// it reads them. Every [`Store`] operation is written once, over raw
/// tables, on top of it (`ops`), so the backends cannot disagree on what
/// an operation means; each only says how it writes and reads.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Queues `op`; writes are applied in the order queued. Returns once
    /// it is queued, with what resolves once it is durable.
    fn send(&self, op: WriteOp) -> impl Future<Output = Result<Pending, StoreError>> + Send;

    /// Runs `f` against a consistent view of the tables.
    fn read<T>(
        &self,
        f: impl FnOnce(&dyn Tables) -> Result<T, StoreError>,
    ) -> Result<T, StoreError>;
}

/// Where a store's writes go: every store queues them for one writer.
/// The write half of [`Store`] is written once over it (`writes`), for
/// the backends above and for PostgreSQL, which reads otherwise.
pub(crate) trait Queue: Send + Sync + 'static {
    /// Queues `op`; returns once queued, with what resolves once durable.
    fn queue(&self, op: WriteOp) -> impl Future<Output = Result<Pending, StoreError>> + Send;
}

impl<B: Backend> Queue for B {
    fn queue(&self, op: WriteOp) -> impl Future<Output = Result<Pending, StoreError>> + Send {
        self.send(op)
    }
}

/// The write half of [`Store`], once for every store.
pub(crate) mod writes {
    use super::*;

    /// One write, waited for until durable.
    async fn write<Q: Queue>(q: &Q, op: WriteOp) -> Result<Reply, StoreError> {
        q.queue(op).await?.wait().await
    }

    pub(crate) async fn enqueue<Q: Queue>(q: &Q, batch: Batch) -> Result<Commit, StoreError> {
        q.queue(WriteOp::Batch(batch.ops)).await.map(Commit::new)
    }

    pub(crate) async fn insert_job<Q: Queue>(q: &Q, job: Job) -> Result<Inserted, StoreError> {
        let bytes = codec::encode("job", &job)?;
        match write(q, WriteOp::Insert(Box::new(job), bytes)).await? {
            Reply::Inserted(i) => Ok(*i),
            other => Err(ops::unexpected(other)),
        }
    }

    pub(crate) async fn transition<Q: Queue>(
        q: &Q,
        id: JobId,
        expected: JobState,
        attempt: u32,
        t: Transition,
        now: Timestamp,
    ) -> Result<Job, StoreError> {
        let op = WriteOp::Transition {
            id,
            expected,
            attempt,
            t,
            now,
        };
        match write(q, op).await? {
            Reply::Job(j) => Ok(*j),
            other => Err(ops::unexpected(other)),
        }
    }

    pub(crate) async fn record_attempt<Q: Queue>(
        q: &Q,
        record: AttemptRecord,
    ) -> Result<(), StoreError> {
        write(q, WriteOp::Attempt(record)).await.map(|_| ())
    }

    pub(crate) async fn append_log<Q: Queue>(
        q: &Q,
        job: JobId,
        attempt: u32,
        seq: u64,
        chunk: LogChunk,
    ) -> Result<LogAppend, StoreError> {
        let op = WriteOp::Log {
            job,
            attempt,
            seq,
            chunk,
        };
        match write(q, op).await? {
            Reply::Log(l) => Ok(l),
            other => Err(ops::unexpected(other)),
        }
    }

    pub(crate) async fn append_audit<Q: Queue>(
        q: &Q,
        entry: AuditEntry,
    ) -> Result<AuditRecord, StoreError> {
        match write(q, WriteOp::Audit(entry)).await? {
            Reply::Audit(a) => Ok(*a),
            other => Err(ops::unexpected(other)),
        }
    }

    /// Puts (`Some`) or removes (`None`) a keyed record of `table`.
    pub(crate) async fn record<Q: Queue>(
        q: &Q,
        table: Table,
        kind: &str,
        id: &str,
        value: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let op = WriteOp::Record {
            table,
            kind: kind.to_string(),
            id: id.to_string(),
            value,
        };
        match write(q, op).await? {
            Reply::Existed(e) => Ok(e),
            other => Err(ops::unexpected(other)),
        }
    }

    /// Writes in one transaction, each with its own outcome; fails if
    /// any failed.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) async fn all<Q: Queue>(q: &Q, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        match write(q, WriteOp::Batch(ops)).await? {
            Reply::Batch(rs) => rs.into_iter().try_for_each(|r| r.map(|_| ())),
            other => Err(ops::unexpected(other)),
        }
    }
}

impl<B: Backend> Store for B {
    async fn enqueue(&self, batch: Batch) -> Result<Commit, StoreError> {
        writes::enqueue(self, batch).await
    }

    async fn find_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<Job>, StoreError> {
        self.read(|t| ops::find_idempotent(t, tenant, key))
    }

    async fn insert_job(&self, job: Job) -> Result<Inserted, StoreError> {
        writes::insert_job(self, job).await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(|t| ops::get_job(t, id))
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Page, StoreError> {
        self.read(|t| ops::list_jobs(t, &filter))
    }

    async fn transition(
        &self,
        id: JobId,
        expected: JobState,
        attempt: u32,
        t: Transition,
        now: Timestamp,
    ) -> Result<Job, StoreError> {
        writes::transition(self, id, expected, attempt, t, now).await
    }

    async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        writes::record_attempt(self, record).await
    }

    async fn attempts(&self, job: JobId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|t| ops::attempts(t, job))
    }

    async fn append_log(
        &self,
        job: JobId,
        attempt: u32,
        seq: u64,
        chunk: LogChunk,
    ) -> Result<LogAppend, StoreError> {
        writes::append_log(self, job, attempt, seq, chunk).await
    }

    async fn read_logs(
        &self,
        job: JobId,
        from: LogCursor,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        self.read(|t| ops::read_logs(t, job, from, limit))
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        writes::append_audit(self, entry).await
    }

    async fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|t| ops::audit_records(t, from, limit))
    }

    async fn verify_audit(&self) -> Result<ChainCheck, StoreError> {
        self.read(ops::verify_audit)
    }

    async fn recover(&self) -> Result<Vec<Job>, StoreError> {
        self.read(ops::recover)
    }

    async fn put_credential(
        &self,
        kind: &str,
        id: &str,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        writes::record(self, Table::Credentials, kind, id, Some(value)).await
    }

    async fn remove_credential(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        writes::record(self, Table::Credentials, kind, id, None).await
    }

    async fn credentials(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|t| ops::records(t, Table::Credentials, kind))
    }

    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        writes::record(self, Table::Records, kind, id, Some(value)).await
    }

    async fn remove_record(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        writes::record(self, Table::Records, kind, id, None).await
    }

    async fn record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|t| ops::record(t, Table::Records, kind, id))
    }

    async fn records(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|t| ops::records(t, Table::Records, kind))
    }
}
