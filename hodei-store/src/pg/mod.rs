//! The store on PostgreSQL (feature `postgres`): [`PgDatabase`] (a
//! connected, migrated database), [`PgStore`] (the [`Store`] trait over
//! it, with group commit and fencing) and [`Lease`] (which server leads).
//!
//! **Group commit.** Writes from every task go into one bounded queue (a
//! full queue makes submitters wait). One writer task takes everything
//! waiting, up to `max_batch`, and commits it in one transaction: the
//! records the batch reads are fetched in one pipelined round trip, the
//! operations (the same code as the embedded stores) are applied in
//! memory, and what changed is written with one statement per table,
//! pipelined, before COMMIT. A write resolves only after COMMIT. A logical
//! refusal fails its own write only; a failure of the database fails the
//! whole batch, nothing of it is acknowledged, and the writer reconnects
//! for the next.
//!
//! **Fencing.** A store made for a leadership epoch
//! ([`PgDatabase::store`] with `Some(epoch)`) checks, inside every
//! transaction, that the lease still holds that epoch, holding a share
//! lock on it until COMMIT: a server that takes the lease waits for that
//! transaction to end, and every transaction after sees the new epoch and
//! writes nothing ([`StoreError::Fenced`]).
//!
//! **Reads** use a small pool of connections, each query prepared once per
//! connection.

mod copy;
mod lease;
mod local;
mod overlay;
mod schema;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use hodei_core::{Job, JobId, JobState, TenantId, Timestamp, Transition};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{Client, NoTls, Statement};

use crate::audit::{AuditEntry, AuditRecord, ChainCheck};
use crate::batch::{Batch, Commit, Pending};
use crate::codec::decode;
use crate::error::StoreError;
use crate::model::{
    AttemptRecord, Inserted, JobFilter, LogAppend, LogChunk, LogCursor, LogEntry, LogPage, Page,
};
use crate::ops::{self, Reply, Table, WriteOp};
use crate::redb_store::WriteStats;
use crate::store::{Queue, Store, StoreConfig, writes};

pub use copy::{Copied, copy_redb};
pub use lease::{Lease, LeaseHolder};
pub use local::{LocalCluster, LocalClusterError};
pub use schema::SCHEMA_VERSION;

use overlay::Overlay;

pub(crate) fn pg_error(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::storage(e)
}

/// The writer's statements, prepared once per connection.
const WRITER_SQL: &[(&str, &str)] = &[
    (
        "fence",
        "SELECT epoch FROM hodei_lease WHERE id = 1 FOR SHARE",
    ),
    (
        "fetch_jobs",
        "SELECT id, body FROM hodei_jobs WHERE id = ANY($1::bytea[])",
    ),
    (
        "fetch_idem",
        "SELECT j.tenant, j.idem_key, j.id, j.body
         FROM unnest($1::text[], $2::text[]) AS k(tenant, idem)
         JOIN hodei_jobs j ON j.tenant = k.tenant AND j.idem_key = k.idem",
    ),
    (
        "fetch_logs",
        "SELECT c.job, c.attempt, c.seq
         FROM unnest($1::bytea[], $2::int8[], $3::int8[]) AS k(job, attempt, seq)
         JOIN hodei_log_chunks c ON c.job = k.job AND c.attempt = k.attempt AND c.seq = k.seq",
    ),
    (
        "fetch_log_meta",
        "SELECT job, stored_bytes, dropped_bytes FROM hodei_log_meta WHERE job = ANY($1::bytea[])",
    ),
    (
        "fetch_meta",
        "SELECT key, value FROM hodei_meta WHERE key = ANY($1::bytea[])",
    ),
    (
        "fetch_attempts",
        "SELECT a.job, a.attempt, a.body
         FROM unnest($1::bytea[], $2::int8[]) AS k(job, attempt)
         JOIN hodei_attempts a ON a.job = k.job AND a.attempt = k.attempt",
    ),
    (
        "fetch_credentials",
        "SELECT c.kind, c.id, c.value
         FROM unnest($1::text[], $2::text[]) AS k(kind, id)
         JOIN hodei_credentials c ON c.kind = k.kind AND c.id = k.id",
    ),
    (
        "fetch_records",
        "SELECT c.kind, c.id, c.value
         FROM unnest($1::text[], $2::text[]) AS k(kind, id)
         JOIN hodei_records c ON c.kind = k.kind AND c.id = k.id",
    ),
    (
        "put_jobs",
        "INSERT INTO hodei_jobs (id, tenant, state, active, idem_key, body)
         SELECT * FROM unnest($1::bytea[], $2::text[], $3::int2[], $4::bool[], $5::text[], $6::bytea[])
         ON CONFLICT (id) DO UPDATE
         SET state = EXCLUDED.state, active = EXCLUDED.active, body = EXCLUDED.body",
    ),
    (
        "put_attempts",
        "INSERT INTO hodei_attempts (job, attempt, body)
         SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[])
         ON CONFLICT (job, attempt) DO UPDATE SET body = EXCLUDED.body",
    ),
    (
        "put_logs",
        "INSERT INTO hodei_log_chunks (job, attempt, seq, stream, at_ms, data)
         SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int2[], $5::int8[], $6::bytea[])
         ON CONFLICT DO NOTHING",
    ),
    (
        "put_log_meta",
        "INSERT INTO hodei_log_meta (job, stored_bytes, dropped_bytes)
         SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int8[])
         ON CONFLICT (job) DO UPDATE
         SET stored_bytes = EXCLUDED.stored_bytes, dropped_bytes = EXCLUDED.dropped_bytes",
    ),
    (
        "put_audit",
        "INSERT INTO hodei_audit (seq, actor, action, target, hash, body)
         SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[])
         ON CONFLICT (seq) DO UPDATE
         SET actor = EXCLUDED.actor, action = EXCLUDED.action, target = EXCLUDED.target,
             hash = EXCLUDED.hash, body = EXCLUDED.body",
    ),
    (
        "put_meta",
        "INSERT INTO hodei_meta (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[])
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    ),
    (
        "put_credentials",
        "INSERT INTO hodei_credentials (kind, id, value)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
         ON CONFLICT (kind, id) DO UPDATE SET value = EXCLUDED.value",
    ),
    (
        "delete_credentials",
        "DELETE FROM hodei_credentials c USING unnest($1::text[], $2::text[]) AS k(kind, id)
         WHERE c.kind = k.kind AND c.id = k.id",
    ),
    (
        "put_records",
        "INSERT INTO hodei_records (kind, id, value)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
         ON CONFLICT (kind, id) DO UPDATE SET value = EXCLUDED.value",
    ),
    (
        "delete_records",
        "DELETE FROM hodei_records c USING unnest($1::text[], $2::text[]) AS k(kind, id)
         WHERE c.kind = k.kind AND c.id = k.id",
    ),
];

/// Prepared statements by name.
pub(crate) struct Statements(HashMap<&'static str, Statement>);

impl Statements {
    pub(crate) fn get(&self, name: &str) -> Option<&Statement> {
        self.0.get(name)
    }
}

/// A connected PostgreSQL database: a pool of connections and the
/// settings to open more.
#[derive(Clone)]
pub struct PgDatabase {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDatabase")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// How long connecting may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgDatabase {
    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// or key-value form), with at most `pool_size` connections for reads
    /// and the lease besides the writer's own. Nothing is read or
    /// written: see [`migrate`](Self::migrate) and
    /// [`check_schema`](Self::check_schema).
    ///
    /// # Errors
    ///
    /// [`StoreError::Storage`] when the URL does not parse or no
    /// connection can be made.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(pg_error)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hodei");
        }
        let mgr = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(pg_error)?;
        // Fail now, naming the cause, rather than at the first write.
        drop(pool.get().await.map_err(pg_error)?);
        Ok(PgDatabase { pool, config })
    }

    /// Brings the schema to [`SCHEMA_VERSION`], in order, each migration
    /// once (servers starting together take turns). Returns the version
    /// the database was at.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnsupportedSchema`] for a database of a newer
    /// version, untouched; [`StoreError::Storage`] when a migration fails
    /// (it is rolled back).
    pub async fn migrate(&self) -> Result<u32, StoreError> {
        schema::migrate(&self.pool).await
    }

    /// The schema version the database is at, refused if this build
    /// cannot read it (0: Hodei never used it).
    ///
    /// # Errors
    ///
    /// [`StoreError::UnsupportedSchema`], or [`StoreError::Storage`].
    pub async fn check_schema(&self) -> Result<u32, StoreError> {
        let v = schema::version(&self.pool).await?;
        schema::check(v)?;
        Ok(v)
    }

    /// The leader lease, held for `ttl` at a time by `holder`.
    pub fn lease(&self, holder: &str, ttl: Duration) -> Lease {
        Lease::new(self.pool.clone(), holder, ttl)
    }

    /// A store on this database. With `fence`, every commit first checks
    /// that the lease is still at that epoch and writes nothing otherwise.
    /// The schema must be migrated.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnsupportedSchema`] or a schema not yet migrated
    /// ([`StoreError::Storage`]).
    pub async fn store(
        &self,
        config: StoreConfig,
        fence: Option<i64>,
    ) -> Result<PgStore, StoreError> {
        let v = self.check_schema().await?;
        if v < SCHEMA_VERSION {
            return Err(StoreError::storage_message(format!(
                "the database is at schema version {v}, not {SCHEMA_VERSION}: run `hodei-server migrate`"
            )));
        }
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let stats = Arc::new(WriteStats::default());
        let (failed_tx, failed) = watch::channel(None);
        let writer = Writer {
            config: self.config.clone(),
            conn: None,
            fence,
            max_log: config.max_log_bytes_per_job,
        };
        tokio::spawn(writer_loop(
            writer,
            rx,
            config,
            Arc::clone(&stats),
            failed_tx,
        ));
        Ok(PgStore {
            inner: Arc::new(Inner {
                tx,
                pool: self.pool.clone(),
                stats,
                failed,
                fence,
            }),
        })
    }
}

struct Inner {
    tx: mpsc::Sender<Request>,
    pool: Pool,
    stats: Arc<WriteStats>,
    failed: watch::Receiver<Option<StoreError>>,
    fence: Option<i64>,
}

/// The [`Store`] trait on PostgreSQL: see the [module](self).
///
/// Made by [`PgDatabase::store`]. Clones share the writer; it stops once
/// the last clone is dropped, after committing what is queued.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("fence", &self.inner.fence)
            .finish_non_exhaustive()
    }
}

struct Request {
    op: WriteOp,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

struct Conn {
    client: Client,
    st: Statements,
}

struct Writer {
    config: tokio_postgres::Config,
    conn: Option<Conn>,
    fence: Option<i64>,
    max_log: u64,
}

/// How long the writer's session may sit inside a transaction doing
/// nothing: a writer paused mid-transaction (a stopped process) loses its
/// session, and with it the share lock that would keep a new leader
/// waiting.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(2);

impl Writer {
    async fn connect(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let (client, connection) = self.config.connect(NoTls).await.map_err(pg_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "store writer connection ended");
                }
            });
            client
                .batch_execute(&format!(
                    "SET idle_in_transaction_session_timeout = {}",
                    IDLE_IN_TRANSACTION.as_millis()
                ))
                .await
                .map_err(pg_error)?;
            let mut st = HashMap::new();
            for (name, sql) in WRITER_SQL {
                st.insert(*name, client.prepare(sql).await.map_err(pg_error)?);
            }
            self.conn = Some(Conn {
                client,
                st: Statements(st),
            });
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::storage_message("no connection"))
    }

    async fn commit(
        &mut self,
        batch: &mut [Request],
    ) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
        let (fence, max_log) = (self.fence, self.max_log);
        let conn = self.connect().await?;
        let txn = conn.client.transaction().await.map_err(pg_error)?;
        let st = &conn.st;
        let mut needs = Vec::new();
        for r in batch.iter() {
            ops::needs(&r.op, &mut needs);
        }
        let mut overlay = Overlay::default();
        let check = async {
            let Some(epoch) = fence else { return Ok(()) };
            let stmt = st
                .get("fence")
                .ok_or_else(|| StoreError::storage_message("internal: no fence statement"))?;
            let current: i64 = txn.query_one(stmt, &[]).await.map_err(pg_error)?.get(0);
            if current == epoch {
                Ok(())
            } else {
                Err(StoreError::Fenced { epoch, current })
            }
        };
        tokio::try_join!(check, overlay.fetch(&txn, st, needs))?;
        let mut results = Vec::with_capacity(batch.len());
        for req in batch.iter_mut() {
            let op = std::mem::replace(&mut req.op, WriteOp::Batch(Vec::new()));
            match ops::apply(&mut overlay, op, max_log) {
                // Dropping the transaction rolls it back.
                Err(e) if !ops::is_logical(&e) => return Err(e),
                r => results.push(r),
            }
        }
        overlay.flush(&txn, st).await?;
        txn.commit().await.map_err(pg_error)?;
        Ok(results)
    }
}

async fn writer_loop(
    mut w: Writer,
    mut rx: mpsc::Receiver<Request>,
    config: StoreConfig,
    stats: Arc<WriteStats>,
    failed: watch::Sender<Option<StoreError>>,
) {
    let max_batch = config.max_batch.max(1);
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    let mut active = 1;
    // Once fenced, always fenced: another server leads.
    let mut fenced: Option<StoreError> = None;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let want = active.min(max_batch);
        if batch.len() < want && !config.linger.is_zero() {
            let _ = tokio::time::timeout(config.linger, async {
                while batch.len() < want {
                    match rx.recv().await {
                        Some(r) => batch.push(r),
                        None => break,
                    }
                }
            })
            .await;
        }
        let committed = batch.len();
        let writes: usize = batch.iter().map(|r| r.op.writes()).sum();
        let started = Instant::now();
        let outcome = match &fenced {
            Some(e) => Err(e.clone()),
            None => w.commit(&mut batch).await,
        };
        stats.record(writes, started);
        match outcome {
            Ok(results) => {
                for (req, result) in batch.drain(..).zip(results) {
                    let _ = req.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes, "store commit failed");
                // The session may be in any state now: start afresh.
                w.conn = None;
                if matches!(e, StoreError::Fenced { .. }) {
                    fenced = Some(e.clone());
                }
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(e.clone()));
                }
                failed.send_replace(Some(e));
            }
        }
        active = committed + rx.len();
    }
}

impl PgStore {
    /// Counters of the group-commit writer.
    pub fn write_stats(&self) -> &WriteStats {
        &self.inner.stats
    }

    /// The leadership epoch this store's writes are fenced by, if any.
    pub fn fence(&self) -> Option<i64> {
        self.inner.fence
    }

    /// Resolves with the first commit that failed for a reason other than
    /// a logical refusal (the database unreachable, fenced): what the
    /// writer acknowledged before it is durable, but a caller that keeps
    /// state beside the store (a server's engine) should start again from
    /// the store.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn failed(&self) -> StoreError {
        let mut rx = self.inner.failed.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return StoreError::Closed;
            }
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(pg_error)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(pg_error)?;
        c.query(&st, params).await.map_err(pg_error)
    }

    /// Writes raw records as an embedded store keeps them, in one
    /// transaction: how a deployment moves here ([`copy_redb`]).
    pub(crate) async fn put_raw(
        &self,
        records: Vec<(Table, Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let ops = records
            .into_iter()
            .map(|(t, k, v)| WriteOp::Put(t, k, v))
            .collect();
        writes::all(self, ops).await
    }
}

impl Queue for PgStore {
    async fn queue(&self, op: WriteOp) -> Result<Pending, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Pending::Waiting(rx))
    }
}

fn jobs_of(rows: Vec<tokio_postgres::Row>) -> Result<Vec<Job>, StoreError> {
    rows.iter()
        .map(|r| crate::codec::decode_job(r.get::<_, &[u8]>(0)))
        .collect()
}

impl Store for PgStore {
    async fn insert_job(&self, job: Job) -> Result<Inserted, StoreError> {
        writes::insert_job(self, job).await
    }

    async fn enqueue(&self, batch: Batch) -> Result<Commit, StoreError> {
        writes::enqueue(self, batch).await
    }

    async fn find_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<Job>, StoreError> {
        let rows = self
            .query(
                "SELECT body FROM hodei_jobs WHERE tenant = $1 AND idem_key = $2",
                &[&tenant.as_str(), &key],
            )
            .await?;
        Ok(jobs_of(rows)?.pop())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let rows = self
            .query(
                "SELECT body FROM hodei_jobs WHERE id = $1",
                &[&id.to_be_bytes().as_slice()],
            )
            .await?;
        Ok(jobs_of(rows)?.pop())
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Page, StoreError> {
        let limit = filter.effective_limit();
        let tenant = filter.tenant.as_ref().map(|t| t.as_str());
        let state = filter.state.map(|s| i16::from(s.code()));
        let after = filter.after.map(|a| a.to_be_bytes().to_vec());
        let rows = self
            .query(
                "SELECT body FROM hodei_jobs
                 WHERE ($1::text IS NULL OR tenant = $1)
                   AND ($2::int2 IS NULL OR state = $2)
                   AND ($3::bytea IS NULL OR id > $3)
                 ORDER BY id LIMIT $4",
                &[&tenant, &state, &after, &(limit as i64)],
            )
            .await?;
        let jobs: Vec<Job> = jobs_of(rows)?
            .into_iter()
            .filter(|j| filter.matches(j))
            .collect();
        let next = (jobs.len() == limit)
            .then(|| jobs.last().map(|j| j.id))
            .flatten();
        Ok(Page { jobs, next })
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
        let rows = self
            .query(
                "SELECT body FROM hodei_attempts WHERE job = $1 ORDER BY attempt",
                &[&job.to_be_bytes().as_slice()],
            )
            .await?;
        rows.iter()
            .map(|r| decode("attempt", r.get::<_, &[u8]>(0)))
            .collect()
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
        let limit = limit.clamp(1, 10_000) as i64;
        let id = job.to_be_bytes().to_vec();
        let rows = self
            .query(
                "SELECT attempt, seq, stream, at_ms, data FROM hodei_log_chunks
                 WHERE job = $1 AND (attempt, seq) >= ($2, $3)
                 ORDER BY attempt, seq LIMIT $4",
                &[&id, &i64::from(from.attempt), &(from.seq as i64), &limit],
            )
            .await?;
        let entries = rows
            .into_iter()
            .map(|r| {
                Ok(LogEntry {
                    cursor: LogCursor {
                        attempt: overlay::attempt(r.get(0))?,
                        seq: r.get::<_, i64>(1) as u64,
                    },
                    chunk: overlay::chunk(r.get(2), r.get(3), r.get(4))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let meta = self
            .query(
                "SELECT dropped_bytes FROM hodei_log_meta WHERE job = $1",
                &[&id],
            )
            .await?;
        Ok(LogPage {
            entries,
            truncated_bytes: meta.first().map_or(0, |r| r.get::<_, i64>(0) as u64),
        })
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        writes::append_audit(self, entry).await
    }

    async fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT body FROM hodei_audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&from, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| decode("audit record", r.get::<_, &[u8]>(0)))
            .collect()
    }

    async fn verify_audit(&self) -> Result<ChainCheck, StoreError> {
        let records = self.audit_records(0, usize::MAX).await?;
        let head = self
            .query(
                "SELECT value FROM hodei_meta WHERE key = $1",
                &[&ops::AUDIT_HEAD_KEY],
            )
            .await?;
        let head = match head.first() {
            Some(r) => decode("audit head", r.get::<_, &[u8]>(0))?,
            None => (0, [0; 32]),
        };
        Ok(ops::check_chain(&records, head))
    }

    async fn recover(&self) -> Result<Vec<Job>, StoreError> {
        let rows = self
            .query("SELECT body FROM hodei_jobs WHERE active ORDER BY id", &[])
            .await?;
        jobs_of(rows)
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
        let rows = self
            .query(
                "SELECT id, value FROM hodei_credentials WHERE kind = $1 ORDER BY id COLLATE \"C\"",
                &[&kind],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        writes::record(self, Table::Records, kind, id, Some(value)).await
    }

    async fn remove_record(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        writes::record(self, Table::Records, kind, id, None).await
    }

    async fn record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self
            .query(
                "SELECT value FROM hodei_records WHERE kind = $1 AND id = $2",
                &[&kind, &id],
            )
            .await?;
        Ok(rows.into_iter().next().map(|r| r.get(0)))
    }

    async fn records(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self
            .query(
                "SELECT id, value FROM hodei_records WHERE kind = $1 ORDER BY id COLLATE \"C\"",
                &[&kind],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
