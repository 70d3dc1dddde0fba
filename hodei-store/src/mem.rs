//! [`MemStore`]: the [`Store`] trait in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use hodei_core::{Job, JobId, JobState, Timestamp, Transition};
use parking_lot::Mutex;

use crate::audit::{AuditEntry, AuditRecord, ChainCheck};
use crate::error::StoreError;
use crate::model::{
    AttemptRecord, Inserted, JobFilter, LogAppend, LogChunk, LogCursor, LogPage, Page,
};
use crate::ops::{self, Reply, Table, Tables, TablesMut, Visit, WriteOp};
use crate::store::{Store, StoreConfig};

#[derive(Default)]
struct Maps(BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>);

impl Tables for Maps {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(&t).and_then(|m| m.get(key)).cloned())
    }

    fn scan(
        &self,
        t: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<(), StoreError> {
        let Some(m) = self.0.get(&t) else {
            return Ok(());
        };
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        for (k, v) in m.range::<[u8], _>((Bound::Included(from), upper)) {
            if !f(k, v)? {
                break;
            }
        }
        Ok(())
    }
}

impl TablesMut for Maps {
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.0
            .entry(t)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, t: Table, key: &[u8]) -> Result<(), StoreError> {
        if let Some(m) = self.0.get_mut(&t) {
            m.remove(key);
        }
        Ok(())
    }
}

/// The [`Store`] trait in memory: for tests, and for hosts that want no
/// persistence. Records go through the same encoding and the same
/// operations as the redb store; each operation holds one lock for its
/// duration, so operations are atomic and serialised.
#[derive(Clone, Default)]
pub struct MemStore {
    maps: Arc<Mutex<Maps>>,
    config: StoreConfig,
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        MemStore {
            maps: Arc::default(),
            config,
        }
    }

    fn write(&self, op: WriteOp) -> Result<Reply, StoreError> {
        let mut maps = self.maps.lock();
        ops::apply(&mut *maps, op, self.config.max_log_bytes_per_job)
    }
}

macro_rules! expect_reply {
    ($r:expr, $variant:ident) => {
        match $r? {
            Reply::$variant(v) => Ok(v),
            other => Err(StoreError::Storage(format!(
                "unexpected writer reply {other:?}"
            ))),
        }
    };
}
pub(crate) use expect_reply;

impl Store for MemStore {
    async fn insert_job(&self, job: Job) -> Result<Inserted, StoreError> {
        expect_reply!(self.write(WriteOp::Insert(Box::new(job))), Inserted).map(|i| *i)
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        ops::get_job(&*self.maps.lock(), id)
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Page, StoreError> {
        ops::list_jobs(&*self.maps.lock(), &filter)
    }

    async fn transition(
        &self,
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
        expect_reply!(self.write(op), Job).map(|j| *j)
    }

    async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        self.write(WriteOp::Attempt(record)).map(|_| ())
    }

    async fn attempts(&self, job: JobId) -> Result<Vec<AttemptRecord>, StoreError> {
        ops::attempts(&*self.maps.lock(), job)
    }

    async fn append_log(
        &self,
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
        expect_reply!(self.write(op), Log)
    }

    async fn read_logs(
        &self,
        job: JobId,
        from: LogCursor,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        ops::read_logs(&*self.maps.lock(), job, from, limit)
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        expect_reply!(self.write(WriteOp::Audit(entry)), Audit)
    }

    async fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        ops::audit_records(&*self.maps.lock(), from, limit)
    }

    async fn verify_audit(&self) -> Result<ChainCheck, StoreError> {
        ops::verify_audit(&*self.maps.lock())
    }

    async fn recover(&self) -> Result<Vec<Job>, StoreError> {
        ops::recover(&*self.maps.lock())
    }
}
