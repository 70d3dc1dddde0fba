//! [`RedbStore`]: one redb file, with group commit.

use std::any::Any;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hodei_core::{JobId, Timestamp};
use parking_lot::Mutex;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::batch::Pending;
use crate::error::StoreError;
use crate::model::AttemptRecord;
use crate::ops::{self, Reply, STORE_FORMAT, Table, Tables, TablesMut, Visit, WriteOp};
use crate::store::{Backend, StoreConfig};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(t: Table) -> Def {
    TableDefinition::new(t.name())
}

fn get_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    let v = table.get(key).map_err(StoreError::storage)?;
    Ok(v.map(|g| g.value().to_vec()))
}

fn scan_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    from: &[u8],
    to: Option<&[u8]>,
    f: Visit<'_>,
) -> Result<(), StoreError> {
    let iter = match to {
        Some(to) => table.range::<&[u8]>(from..to),
        None => table.range::<&[u8]>(from..),
    }
    .map_err(StoreError::storage)?;
    for item in iter {
        let (k, v) = item.map_err(StoreError::storage)?;
        if !f(k.value(), v.value())? {
            break;
        }
    }
    Ok(())
}

/// Where log chunks live: one append-only file beside the database
/// (`<path>.logs`). The `Logs` table holds, for each chunk, a small pointer
/// into it; bulk output then costs a sequential write instead of B-tree
/// pages. The file is synced before the transaction holding its pointers
/// commits, so a committed pointer never points past what is on disk; bytes
/// written by a transaction that did not commit are never pointed at.
#[derive(Debug)]
struct Segment {
    file: File,
    path: PathBuf,
}

/// The tag of a pointer value; an inline value (a store written before
/// segments) starts with the codec's format byte instead.
const POINTER_TAG: u8 = 0xF1;
const POINTER_LEN: usize = 1 + 8 + 4 + 8;

fn pointer(offset: u64, value: &[u8]) -> [u8; POINTER_LEN] {
    let mut p = [0u8; POINTER_LEN];
    p[0] = POINTER_TAG;
    p[1..9].copy_from_slice(&offset.to_be_bytes());
    p[9..13].copy_from_slice(&(value.len() as u32).to_be_bytes());
    p[13..21].copy_from_slice(&blake3::hash(value).as_bytes()[..8]);
    p
}

impl Segment {
    fn open(db_path: &Path) -> std::io::Result<Self> {
        let mut name = db_path.as_os_str().to_owned();
        name.push(".logs");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        Ok(Segment { file, path })
    }

    /// The value a stored `Logs` entry stands for.
    fn resolve(&self, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        if stored.len() != POINTER_LEN || stored[0] != POINTER_TAG {
            return Ok(stored.to_vec());
        }
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&stored[1..9]);
        let offset = u64::from_be_bytes(b8);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&stored[9..13]);
        let len = u32::from_be_bytes(b4) as usize;
        let mut value = vec![0u8; len];
        self.file
            .read_exact_at(&mut value, offset)
            .map_err(|e| corrupt(format!("log chunk at {offset}: {e}")))?;
        if blake3::hash(&value).as_bytes()[..8] != stored[13..21] {
            return Err(corrupt(format!("log chunk at {offset}: checksum mismatch")));
        }
        Ok(value)
    }

    fn append(&self, value: &[u8]) -> Result<u64, StoreError> {
        let offset = self.file.metadata().map_err(StoreError::storage)?.len();
        (&self.file).write_all(value).map_err(StoreError::storage)?;
        Ok(offset)
    }
}

/// Read access through a read transaction.
struct Reader<'a>(&'a redb::ReadTransaction, &'a Segment);

impl Reader<'_> {
    fn table(
        &self,
        t: Table,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        self.0.open_table(def(t)).map_err(StoreError::storage)
    }
}

impl Tables for Reader<'_> {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let v = get_in(&self.table(t)?, key)?;
        match (t, v) {
            (Table::Logs, Some(v)) => self.1.resolve(&v).map(Some),
            (_, v) => Ok(v),
        }
    }

    fn scan(
        &self,
        t: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<(), StoreError> {
        if t == Table::Logs {
            let seg = self.1;
            return scan_in(&self.table(t)?, from, to, &mut |k, v| {
                f(k, &seg.resolve(v)?)
            });
        }
        scan_in(&self.table(t)?, from, to, f)
    }
}

/// Every table of a write transaction, opened once for a whole batch:
/// opening a table per access costs more than the access.
struct Writer<'txn> {
    tables: Vec<redb::Table<'txn, &'static [u8], &'static [u8]>>,
    segment: &'txn Segment,
    /// Log bytes appended to the segment by this transaction.
    appended: bool,
}

impl<'txn> Writer<'txn> {
    fn open(txn: &'txn redb::WriteTransaction, segment: &'txn Segment) -> Result<Self, StoreError> {
        let tables = Table::ALL
            .iter()
            .map(|t| txn.open_table(def(*t)).map_err(StoreError::storage))
            .collect::<Result<_, _>>()?;
        Ok(Writer {
            tables,
            segment,
            appended: false,
        })
    }

    fn table(&self, t: Table) -> &redb::Table<'txn, &'static [u8], &'static [u8]> {
        &self.tables[t as usize]
    }
}

impl Tables for Writer<'_> {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let v = get_in(self.table(t), key)?;
        match (t, v) {
            (Table::Logs, Some(v)) => self.segment.resolve(&v).map(Some),
            (_, v) => Ok(v),
        }
    }

    fn scan(
        &self,
        t: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<(), StoreError> {
        if t == Table::Logs {
            let seg = self.segment;
            return scan_in(self.table(t), from, to, &mut |k, v| f(k, &seg.resolve(v)?));
        }
        scan_in(self.table(t), from, to, f)
    }
}

impl TablesMut for Writer<'_> {
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if t == Table::Logs {
            let offset = self.segment.append(value)?;
            self.appended = true;
            self.tables[t as usize]
                .insert(key, pointer(offset, value).as_slice())
                .map_err(StoreError::storage)?;
            return Ok(());
        }
        self.tables[t as usize]
            .insert(key, value)
            .map_err(StoreError::storage)?;
        Ok(())
    }

    fn delete(&mut self, t: Table, key: &[u8]) -> Result<(), StoreError> {
        self.tables[t as usize]
            .remove(key)
            .map_err(StoreError::storage)?;
        Ok(())
    }
}

struct Request {
    op: WriteOp,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// Counters of the group-commit writer.
#[derive(Debug, Default)]
pub struct WriteStats {
    commits: AtomicU64,
    writes: AtomicU64,
    commit_micros: AtomicU64,
    largest_batch: AtomicU64,
    /// Commits still to fail on purpose (fault injection; zero otherwise).
    faults: AtomicU64,
}

impl WriteStats {
    /// Counts one commit of `writes` writes begun at `started`.
    pub(crate) fn record(&self, writes: usize, started: Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.largest_batch
            .fetch_max(writes as u64, Ordering::Relaxed);
    }

    /// Transactions committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Writes committed in them.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Total time spent in commits (fsync included), microseconds.
    pub fn commit_micros(&self) -> u64 {
        self.commit_micros.load(Ordering::Relaxed)
    }

    /// The largest batch committed at once.
    pub fn largest_batch(&self) -> u64 {
        self.largest_batch.load(Ordering::Relaxed)
    }
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<WriteStats>,
    segment: Arc<Segment>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it holds and stop.
        self.tx.lock().take();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

/// The embedded store: a redb file, plus `<file>.logs` holding job output
/// (the database keeps a checksummed pointer to each chunk).
///
/// **Group commit**: writes from any number of tasks go into one bounded
/// queue (of `queue_depth`; a full queue makes submitters wait). A single
/// writer thread takes everything waiting, up to `max_batch`, applies it in
/// one transaction and commits it with one fsync; only then does each
/// caller's future resolve. When fewer writes wait than there were active
/// writers at the last commit, it first waits up to `linger` for the rest. A logical refusal (a conflict, say) fails only
/// its own write; a storage failure fails the whole batch, and nothing of it
/// is acknowledged.
///
/// **Reads** run on the caller's thread against a consistent snapshot.
///
/// The file is locked while open: a second open, from this or another
/// process, fails with [`StoreError::Locked`].
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the database failed on damaged data".into())
}

/// Runs `f`, turning a panic inside the database (which it may raise on
/// damaged pages) into an error naming the file.
fn contain<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: panic_text(&*p),
        })
    })
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    ///
    /// A file that is not a Hodei store, is damaged, is held by another
    /// process or comes from a newer version gives an error naming it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] (not a Hodei store, damaged; the database's error
    /// is the source), [`StoreError::Locked`],
    /// [`StoreError::UnsupportedVersion`], [`StoreError::Corrupt`].
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        contain(&path, || Self::open_inner(path.clone(), config))
    }

    fn open_inner(path: PathBuf, config: StoreConfig) -> Result<Self, StoreError> {
        let open_err = |e: StoreError| StoreError::open(path.clone(), e);
        let db = match Database::builder().create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Locked { path }),
            Err(e) => return Err(StoreError::open(path, e)),
        };
        let segment =
            Arc::new(Segment::open(&path).map_err(|e| {
                StoreError::open_message(path.clone(), format!("log segment: {e}"))
            })?);
        // Create every table and check (or stamp) the format version.
        let txn = db
            .begin_write()
            .map_err(|e| StoreError::open(path.clone(), e))?;
        {
            let mut w = Writer::open(&txn, &segment).map_err(open_err)?;
            match ops::read_format(&w).map_err(open_err)? {
                None => ops::write_format(&mut w).map_err(open_err)?,
                Some(v) if v > STORE_FORMAT => {
                    return Err(StoreError::UnsupportedVersion {
                        path,
                        found: v,
                        supported: STORE_FORMAT,
                    });
                }
                Some(_) => {}
            }
        }
        txn.commit()
            .map_err(|e| StoreError::open(path.clone(), e))?;

        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let stats = Arc::new(WriteStats::default());
        let writer = {
            let db = Arc::clone(&db);
            let stats = Arc::clone(&stats);
            let segment = Arc::clone(&segment);
            std::thread::Builder::new()
                .name("hodei-store-writer".into())
                .spawn({
                    let path = path.clone();
                    move || writer_loop(&db, &segment, &path, rx, config, &stats)
                })
                .map_err(|e| StoreError::open(path.clone(), e))?
        };
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                path,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                stats,
                segment,
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters of the group-commit writer.
    pub fn write_stats(&self) -> &WriteStats {
        &self.inner.stats
    }

    /// Makes the next `n` commits fail as a failing disk would: each
    /// batch is applied, then aborted instead of committed, and every
    /// write in it gets a storage error. For tests of what survives a
    /// failed write (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_commits(&self, n: u64) {
        self.inner.stats.faults.store(n, Ordering::Relaxed);
    }
}

fn writer_loop(
    db: &Database,
    segment: &Segment,
    path: &Path,
    mut rx: mpsc::Receiver<Request>,
    config: StoreConfig,
    stats: &WriteStats,
) {
    let max_batch = config.max_batch.max(1);
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    // Writers active at the last commit: those it answered plus those that
    // queued meanwhile. The next batch waits (briefly) for that many.
    let mut active = 1;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Under load, the writers the last commit answered are about to
        // send again: wait briefly for them so one fsync covers them too.
        let want = active.min(max_batch);
        if batch.len() < want && !config.linger.is_zero() {
            let deadline = Instant::now() + config.linger;
            while batch.len() < want && Instant::now() < deadline {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(Duration::from_micros(20))
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
        }
        let committed = batch.len();
        // A queued batch is many writes in one request: count the writes.
        let writes: usize = batch.iter().map(|r| r.op.writes()).sum();
        let started = Instant::now();
        let outcome = contain(path, || {
            commit_batch(
                db,
                segment,
                &mut batch,
                config.max_log_bytes_per_job,
                &stats.faults,
            )
        });
        stats.record(writes, started);
        match outcome {
            Ok(results) => {
                for (req, result) in batch.drain(..).zip(results) {
                    // A caller that stopped waiting is no reason to fail.
                    let _ = req.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "store commit failed");
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
        active = committed + rx.len();
    }
}

/// Applies every request in one transaction and commits it durably.
fn commit_batch(
    db: &Database,
    segment: &Segment,
    batch: &mut [Request],
    max_log: u64,
    faults: &AtomicU64,
) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
    let mut txn = db.begin_write().map_err(StoreError::storage)?;
    txn.set_durability(Durability::Immediate)
        .map_err(StoreError::storage)?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut w = Writer::open(&txn, segment)?;
        for req in batch.iter_mut() {
            // Take the op out; the request keeps its reply channel.
            let op = std::mem::replace(&mut req.op, WriteOp::Attempt(placeholder()));
            match ops::apply(&mut w, op, max_log) {
                // Dropping the transaction aborts it: nothing of the batch
                // is written or acknowledged.
                Err(e) if !ops::is_logical(&e) => return Err(e),
                r => results.push(r),
            }
        }
        // Log bytes reach the disk before the pointers to them commit.
        if w.appended {
            segment.file.sync_data().map_err(StoreError::storage)?;
        }
    }
    if faults
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        // Dropping the transaction aborts it, as a failed commit would.
        return Err(StoreError::storage_message("injected write failure"));
    }
    txn.commit().map_err(StoreError::storage)?;
    Ok(results)
}

fn placeholder() -> AttemptRecord {
    AttemptRecord {
        job: JobId::from_u128(0),
        attempt: 0,
        worker: hodei_core::WorkerId::from_u128(0),
        assigned_at: Timestamp(0),
        started_at: None,
        finished_at: None,
        exit: None,
        peak_memory_mb: None,
    }
}

impl Backend for RedbStore {
    /// Queues `op` for the writer; the writer applies requests in the
    /// order they were queued.
    async fn send(&self, op: WriteOp) -> Result<Pending, StoreError> {
        let tx = self.inner.tx.lock().clone().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Pending::Waiting(rx))
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&dyn Tables) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        contain(&self.inner.path, || {
            let txn = self.inner.db.begin_read().map_err(StoreError::storage)?;
            f(&Reader(&txn, &self.inner.segment))
        })
    }
}
