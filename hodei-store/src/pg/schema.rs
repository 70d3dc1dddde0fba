//! The relational schema and its versioned migrations.
//!
//! Each migration runs once, in order, in one transaction with the
//! version it brings; servers starting together serialise on an advisory
//! lock. A database whose version is newer than this build's is refused
//! before anything is read or written.

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;

use crate::error::StoreError;

use super::pg_error;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 2;

/// Advisory lock key taken while migrating ("hodei" in ASCII).
const MIGRATION_LOCK: i64 = 0x0068_6f64_6569;

/// Migration `i` brings the schema from version `i` to `i + 1`.
///
/// Job ids are 16 big-endian bytes (`bytea` orders them as ids order);
/// `state` is the state's kind (0 queued, 1 assigned, 2 running,
/// 3 waiting to retry, 4 succeeded, 5 failed, 6 cancelled, 7 timed out,
/// 8 lost); `body` columns hold the record in Hodei's binary encoding, so
/// what a job carries can grow without a migration, while everything a
/// query filters, orders or joins on is a column of its own.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hodei_jobs (
    id bytea PRIMARY KEY,
    tenant text NOT NULL,
    state smallint NOT NULL,
    active boolean NOT NULL,
    idem_key text,
    body bytea NOT NULL
);
CREATE UNIQUE INDEX hodei_jobs_idempotency ON hodei_jobs (tenant, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX hodei_jobs_tenant ON hodei_jobs (tenant, id);
CREATE INDEX hodei_jobs_state ON hodei_jobs (state, id);
CREATE INDEX hodei_jobs_active ON hodei_jobs (id) WHERE active;

CREATE TABLE hodei_attempts (
    job bytea NOT NULL,
    attempt bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (job, attempt)
);

CREATE TABLE hodei_log_chunks (
    job bytea NOT NULL,
    attempt bigint NOT NULL,
    seq bigint NOT NULL,
    stream smallint NOT NULL,
    at_ms bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (job, attempt, seq)
);

CREATE TABLE hodei_log_meta (
    job bytea PRIMARY KEY,
    stored_bytes bigint NOT NULL,
    dropped_bytes bigint NOT NULL
);

CREATE TABLE hodei_audit (
    seq bigint PRIMARY KEY,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    hash bytea NOT NULL,
    body bytea NOT NULL
);

CREATE TABLE hodei_meta (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE hodei_credentials (
    kind text NOT NULL,
    id text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE hodei_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text,
    grpc text,
    http text,
    expires_at timestamptz NOT NULL
);
INSERT INTO hodei_lease VALUES (1, 0, NULL, NULL, NULL, '-infinity');
"#,
    r#"
CREATE TABLE hodei_records (
    kind text NOT NULL,
    id text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (kind, id)
);
"#,
];

/// The version a database is at (0 for one Hodei never used).
///
/// # Errors
///
/// [`StoreError::Storage`] when the database cannot be read.
pub(super) async fn version(pool: &Pool) -> Result<u32, StoreError> {
    let client = pool.get().await.map_err(pg_error)?;
    read_version(&client).await
}

async fn read_version(client: &impl GenericClient) -> Result<u32, StoreError> {
    let exists = client
        .query_one("SELECT to_regclass('hodei_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?
        .get::<_, bool>(0);
    if !exists {
        return Ok(0);
    }
    let v: i32 = client
        .query_one("SELECT version FROM hodei_schema WHERE id = 1", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    u32::try_from(v).map_err(|_| StoreError::storage_message(format!("schema version {v}")))
}

/// Refuses a database from a newer Hodei.
pub(super) fn check(found: u32) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings the database to [`SCHEMA_VERSION`]; returns the version it was
/// at.
pub(super) async fn migrate(pool: &Pool) -> Result<u32, StoreError> {
    let mut client = pool.get().await.map_err(pg_error)?;
    let txn = client.transaction().await.map_err(pg_error)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS hodei_schema (
            id integer PRIMARY KEY CHECK (id = 1),
            version integer NOT NULL
        );
        INSERT INTO hodei_schema VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
    )
    .await
    .map_err(pg_error)?;
    let found = read_version(&txn).await?;
    check(found)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        txn.batch_execute(sql).await.map_err(pg_error)?;
        let to = i32::try_from(i + 1).unwrap_or(i32::MAX);
        txn.execute("UPDATE hodei_schema SET version = $1 WHERE id = 1", &[&to])
            .await
            .map_err(pg_error)?;
        tracing::info!(version = to, "database schema migrated");
    }
    txn.commit().await.map_err(pg_error)?;
    Ok(found)
}
