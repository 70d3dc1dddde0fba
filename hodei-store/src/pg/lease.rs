//! [`Lease`]: which server leads, for how long, and in which epoch.
//!
//! One row in `hodei_lease`. Taking it over (once it has expired by the
//! database's clock) increments the epoch; renewing only extends it, and
//! only for the epoch that holds it. Times are the database server's, so
//! the servers' clocks need not agree.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::error::StoreError;

use super::pg_error;

/// Who holds the lease, as the database says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseHolder {
    /// The epoch: incremented by every takeover.
    pub epoch: i64,
    /// The holder's name (unique per server process).
    pub holder: Option<String>,
    /// Where the holder serves gRPC, as it advertises it.
    pub grpc: Option<String>,
    /// Where the holder serves HTTP.
    pub http: Option<String>,
    /// Whether the lease is still running.
    pub live: bool,
}

/// The leader lease of one database.
#[derive(Clone)]
pub struct Lease {
    pool: Pool,
    holder: String,
    ttl: Duration,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// How long taking or renewing the lease may wait for a row lock (a
/// commit in flight holds a share lock on it).
const LOCK_WAIT_MS: u64 = 1000;

impl Lease {
    pub(super) fn new(pool: Pool, holder: &str, ttl: Duration) -> Self {
        Lease {
            pool,
            holder: holder.to_string(),
            ttl,
        }
    }

    /// How long the lease runs from each take or renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// This server's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    async fn one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let mut c = self.pool.get().await.map_err(pg_error)?;
        let txn = c.transaction().await.map_err(pg_error)?;
        txn.batch_execute(&format!("SET LOCAL lock_timeout = {LOCK_WAIT_MS}"))
            .await
            .map_err(pg_error)?;
        let row = txn.query_opt(sql, params).await.map_err(pg_error)?;
        txn.commit().await.map_err(pg_error)?;
        Ok(row)
    }

    /// Takes the lease if it has expired (or was released), advertising
    /// `grpc` and `http`; returns the new epoch, or `None` while another
    /// holds it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Storage`]: the database is unreachable or the row
    /// stayed locked past a second.
    pub async fn try_acquire(&self, grpc: &str, http: &str) -> Result<Option<i64>, StoreError> {
        let row = self
            .one(
                "UPDATE hodei_lease
                 SET epoch = epoch + 1, holder = $1, grpc = $2, http = $3,
                     expires_at = clock_timestamp() + $4::int8 * interval '1 millisecond'
                 WHERE id = 1 AND expires_at < clock_timestamp()
                 RETURNING epoch",
                &[&self.holder, &grpc, &http, &self.ttl_ms()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Extends the lease of `epoch` by its time to live; false if another
    /// epoch holds it now.
    ///
    /// # Errors
    ///
    /// [`StoreError::Storage`]: the database is unreachable.
    pub async fn renew(&self, epoch: i64) -> Result<bool, StoreError> {
        let row = self
            .one(
                "UPDATE hodei_lease
                 SET expires_at = clock_timestamp() + $2::int8 * interval '1 millisecond'
                 WHERE id = 1 AND epoch = $1 AND holder = $3
                 RETURNING epoch",
                &[&epoch, &self.ttl_ms(), &self.holder],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Gives the lease of `epoch` up at once, so a standby takes over
    /// without waiting for it to expire (a server shutting down).
    ///
    /// # Errors
    ///
    /// [`StoreError::Storage`]: the database is unreachable.
    pub async fn release(&self, epoch: i64) -> Result<(), StoreError> {
        self.one(
            "UPDATE hodei_lease SET expires_at = '-infinity'
             WHERE id = 1 AND epoch = $1 AND holder = $2 RETURNING epoch",
            &[&epoch, &self.holder],
        )
        .await?;
        Ok(())
    }

    /// Who holds the lease now.
    ///
    /// # Errors
    ///
    /// [`StoreError::Storage`]: the database is unreachable.
    pub async fn current(&self) -> Result<LeaseHolder, StoreError> {
        let c = self.pool.get().await.map_err(pg_error)?;
        let r = c
            .query_one(
                "SELECT epoch, holder, grpc, http, expires_at > clock_timestamp()
                 FROM hodei_lease WHERE id = 1",
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(LeaseHolder {
            epoch: r.get(0),
            holder: r.get(1),
            grpc: r.get(2),
            http: r.get(3),
            live: r.get(4),
        })
    }
}
