//! [`MemStore`]: the [`Store`](crate::Store) trait in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::batch::Pending;
use crate::error::StoreError;
use crate::ops::{self, Table, Tables, TablesMut, Visit, WriteOp};
use crate::store::{Backend, StoreConfig};

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

/// The [`Store`](crate::Store) trait in memory: for tests, and for hosts that want no
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
}

impl Backend for MemStore {
    async fn send(&self, op: WriteOp) -> Result<Pending, StoreError> {
        let mut maps = self.maps.lock();
        Ok(Pending::Ready(ops::apply(
            &mut *maps,
            op,
            self.config.max_log_bytes_per_job,
        )))
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&dyn Tables) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&*self.maps.lock())
    }
}
