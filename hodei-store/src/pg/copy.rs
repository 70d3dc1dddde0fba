//! Moving an embedded deployment into PostgreSQL.

use crate::error::StoreError;
use crate::ops::{AUDIT_HEAD_KEY, Table};
use crate::store::Backend;
use crate::{RedbStore, Store};

use super::PgStore;

/// What [`copy_redb`] copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Copied {
    /// Jobs.
    pub jobs: u64,
    /// Attempt records.
    pub attempts: u64,
    /// Log chunks.
    pub log_chunks: u64,
    /// Audit records.
    pub audit_records: u64,
    /// Credential records (hashed tokens, revocations).
    pub credentials: u64,
    /// The server's own keyed records (pipelines, schedules, outputs).
    pub records: u64,
}

/// Records copied per transaction.
const CHUNK: usize = 1000;

/// The tables that hold records (the rest are indexes the database keeps
/// as columns).
const TABLES: [Table; 7] = [
    Table::Jobs,
    Table::Attempts,
    Table::Logs,
    Table::LogMeta,
    Table::Audit,
    Table::Credentials,
    Table::Records,
];

/// Copies every record of the embedded store `from` into `to` as it is:
/// jobs in their states, attempts, logs, hashed tokens and revocations,
/// and the audit chain with its hashes and head, so it still verifies.
/// A record already in `to` is replaced by `from`'s; run it on an empty
/// database, before any server starts on it.
///
/// # Errors
///
/// Reading `from` or writing `to` failed; what was copied before stays.
pub async fn copy_redb(from: &RedbStore, to: &PgStore) -> Result<Copied, StoreError> {
    let mut copied = Copied::default();
    for table in TABLES {
        let mut start: Vec<u8> = Vec::new();
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            from.read(|t| {
                t.scan(table, &start, None, &mut |k, v| {
                    chunk.push((table, k.to_vec(), v.to_vec()));
                    Ok(chunk.len() < CHUNK)
                })
            })?;
            let Some((_, last, _)) = chunk.last() else {
                break;
            };
            // The next key after `last`.
            start = last.clone();
            start.push(0);
            let n = chunk.len() as u64;
            to.put_raw(chunk).await?;
            match table {
                Table::Jobs => copied.jobs += n,
                Table::Attempts => copied.attempts += n,
                Table::Logs => copied.log_chunks += n,
                Table::Audit => copied.audit_records += n,
                Table::Credentials => copied.credentials += n,
                Table::Records => copied.records += n,
                _ => {}
            }
        }
    }
    let head = from.read(|t| t.get(Table::Meta, AUDIT_HEAD_KEY))?;
    if let Some(h) = head {
        to.put_raw(vec![(Table::Meta, AUDIT_HEAD_KEY.to_vec(), h)])
            .await?;
    }
    // The copy is whole only if its chain still checks out.
    if let crate::ChainCheck::Broken { index, reason } = to.verify_audit().await? {
        return Err(StoreError::storage_message(format!(
            "the copied audit chain does not verify at record {index}: {reason}"
        )));
    }
    Ok(copied)
}
