//! Store semantics, written once against raw tables so the in-memory and
//! redb stores cannot disagree: idempotent insert, compare-and-set
//! transitions, capped and idempotent logs, the audit chain, recovery.
//!
//! Every write operation validates before it writes, so a logical refusal
//! (conflict, duplicate) never leaves a partial write behind in a shared
//! group-commit transaction.

use hodei_core::{Job, JobId, JobState, TenantId, Timestamp, Transition};

use crate::audit::{AuditEntry, AuditRecord, ChainCheck, verify_chain};
use crate::batch::AttemptPatch;
use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::model::{
    AttemptRecord, Inserted, JobFilter, LogAppend, LogChunk, LogCursor, LogEntry, LogMeta, LogPage,
    Page, StateKind,
};

/// The tables of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Table {
    Jobs,
    Idempotency,
    Active,
    ByTenant,
    ByState,
    Logs,
    LogMeta,
    Attempts,
    Audit,
    Meta,
    Credentials,
    Records,
}

impl Table {
    pub(crate) const ALL: [Table; 12] = [
        Table::Jobs,
        Table::Idempotency,
        Table::Active,
        Table::ByTenant,
        Table::ByState,
        Table::Logs,
        Table::LogMeta,
        Table::Attempts,
        Table::Audit,
        Table::Meta,
        Table::Credentials,
        Table::Records,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Jobs => "jobs",
            Table::Idempotency => "idempotency",
            Table::Active => "active",
            Table::ByTenant => "by_tenant",
            Table::ByState => "by_state",
            Table::Logs => "logs",
            Table::LogMeta => "log_meta",
            Table::Attempts => "attempts",
            Table::Audit => "audit",
            Table::Meta => "meta",
            Table::Credentials => "credentials",
            Table::Records => "records",
        }
    }
}

/// A scan's visitor: returns whether to go on.
pub(crate) type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError>;

/// Read access to raw tables: byte keys in byte order.
pub(crate) trait Tables {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Calls `f` on each entry with `from <= key < to` in order, until it
    /// returns false.
    fn scan(
        &self,
        t: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<(), StoreError>;
}

/// Write access to raw tables.
pub(crate) trait TablesMut: Tables {
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, t: Table, key: &[u8]) -> Result<(), StoreError>;
}

/// A write, as queued for a writer.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// A job and its encoding, made by the submitting task so the single
    /// writer does not spend its time encoding.
    Insert(Box<Job>, Vec<u8>),
    Transition {
        id: JobId,
        expected: JobState,
        attempt: u32,
        t: Transition,
        now: Timestamp,
    },
    Attempt(AttemptRecord),
    Log {
        job: JobId,
        attempt: u32,
        seq: u64,
        chunk: LogChunk,
    },
    Audit(AuditEntry),
    /// A change to an attempt record, read and written in the transaction.
    Patch {
        job: JobId,
        attempt: u32,
        patch: AttemptPatch,
    },
    /// Writes applied in order in one transaction, each with its own
    /// outcome.
    Batch(Vec<WriteOp>),
    /// Puts (`Some`) or removes (`None`) a keyed record of `table`
    /// ([`Table::Credentials`] or [`Table::Records`]).
    Record {
        table: Table,
        kind: String,
        id: String,
        value: Option<Vec<u8>>,
    },
    /// Writes one raw record as another store holds it (moving a
    /// deployment between stores: the records, audit chain included, are
    /// copied as they are).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Put(Table, Vec<u8>, Vec<u8>),
}

impl WriteOp {
    /// How many writes this is (a batch is each of its writes).
    pub(crate) fn writes(&self) -> usize {
        match self {
            WriteOp::Batch(ops) => ops.len(),
            _ => 1,
        }
    }
}

/// What a write returns.
#[derive(Debug)]
pub(crate) enum Reply {
    Inserted(Box<Inserted>),
    Job(Box<Job>),
    Unit,
    Log(LogAppend),
    Audit(Box<AuditRecord>),
    /// Whether the record written or removed was there before.
    Existed(bool),
    Batch(Vec<Result<Reply, StoreError>>),
}

/// A refusal of one write that leaves the rest of its transaction sound
/// (as opposed to a storage failure, which fails the transaction).
pub(crate) fn is_logical(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::UnknownJob(_)
            | StoreError::Conflict { .. }
            | StoreError::Duplicate(_)
            | StoreError::Transition(_)
    )
}

pub(crate) fn unexpected(reply: Reply) -> StoreError {
    StoreError::storage_message(format!("unexpected writer reply {reply:?}"))
}

const FORMAT_KEY: &[u8] = b"format";
pub(crate) const AUDIT_HEAD_KEY: &[u8] = b"audit_head";

/// The store format this build writes.
pub(crate) const STORE_FORMAT: u32 = 1;

pub(crate) fn read_format(t: &dyn Tables) -> Result<Option<u32>, StoreError> {
    Ok(t.get(Table::Meta, FORMAT_KEY)?.and_then(|v| {
        let b: [u8; 4] = v.as_slice().try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }))
}

pub(crate) fn write_format(t: &mut dyn TablesMut) -> Result<(), StoreError> {
    t.put(Table::Meta, FORMAT_KEY, &STORE_FORMAT.to_be_bytes())
}

pub(crate) fn idem_key(tenant: &TenantId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.as_str().len() + 1 + key.len());
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn tenant_key(tenant: &TenantId, id: Option<JobId>) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.as_str().len() + 17);
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(0);
    if let Some(id) = id {
        k.extend_from_slice(&id.to_be_bytes());
    }
    k
}

pub(crate) fn state_key(kind: StateKind, id: JobId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = kind.code();
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn log_key(job: JobId, attempt: u32, seq: u64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..16].copy_from_slice(&job.to_be_bytes());
    k[16..20].copy_from_slice(&attempt.to_be_bytes());
    k[20..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn attempt_key(job: JobId, attempt: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&job.to_be_bytes());
    k[16..].copy_from_slice(&attempt.to_be_bytes());
    k
}

fn id_from(bytes: &[u8]) -> Option<JobId> {
    let b: [u8; 16] = bytes.get(bytes.len().checked_sub(16)?..)?.try_into().ok()?;
    Some(JobId::from_u128(u128::from_be_bytes(b)))
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A record a write reads before it writes, for a backend that fetches
/// them ahead of applying (PostgreSQL fetches a whole batch's in a few
/// round trips).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Need {
    Job(JobId),
    /// A tenant's idempotency key (and the job it names, if any).
    Idempotency(TenantId, String),
    Log(JobId, u32, u64),
    LogMeta(JobId),
    AuditHead,
    Attempt(JobId, u32),
    Record(Table, String, String),
}

/// Every record `op` reads in [`apply`]: a backend that cannot read during
/// `apply` fetches these first. Kept beside `apply`, which reads nothing
/// else in writes.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn needs(op: &WriteOp, out: &mut Vec<Need>) {
    match op {
        WriteOp::Insert(job, _) => {
            out.push(Need::Job(job.id));
            if let Some(k) = &job.spec.idempotency_key {
                out.push(Need::Idempotency(job.spec.tenant.clone(), k.clone()));
            }
        }
        WriteOp::Transition { id, .. } => out.push(Need::Job(*id)),
        WriteOp::Attempt(_) => {}
        WriteOp::Log {
            job, attempt, seq, ..
        } => {
            out.push(Need::Log(*job, *attempt, *seq));
            out.push(Need::LogMeta(*job));
        }
        WriteOp::Audit(_) => out.push(Need::AuditHead),
        WriteOp::Patch { job, attempt, .. } => out.push(Need::Attempt(*job, *attempt)),
        WriteOp::Record {
            table, kind, id, ..
        } => out.push(Need::Record(*table, kind.clone(), id.clone())),
        WriteOp::Batch(ops) => ops.iter().for_each(|o| needs(o, out)),
        WriteOp::Put(..) => {}
    }
}

pub(crate) fn apply(
    t: &mut dyn TablesMut,
    op: WriteOp,
    max_log_bytes: u64,
) -> Result<Reply, StoreError> {
    match op {
        WriteOp::Insert(job, bytes) => {
            insert_job(t, *job, &bytes).map(|i| Reply::Inserted(Box::new(i)))
        }
        WriteOp::Transition {
            id,
            expected,
            attempt,
            t: tr,
            now,
        } => transition(t, id, expected, attempt, tr, now).map(|j| Reply::Job(Box::new(j))),
        WriteOp::Attempt(r) => {
            let v = encode("attempt", &r)?;
            t.put(Table::Attempts, &attempt_key(r.job, r.attempt), &v)?;
            Ok(Reply::Unit)
        }
        WriteOp::Log {
            job,
            attempt,
            seq,
            chunk,
        } => append_log(t, job, attempt, seq, chunk, max_log_bytes).map(Reply::Log),
        WriteOp::Audit(e) => append_audit(t, e).map(|r| Reply::Audit(Box::new(r))),
        WriteOp::Patch {
            job,
            attempt,
            patch,
        } => {
            let key = attempt_key(job, attempt);
            if let Some(v) = t.get(Table::Attempts, &key)? {
                let mut r: AttemptRecord = decode("attempt", &v)?;
                patch.apply(&mut r);
                t.put(Table::Attempts, &key, &encode("attempt", &r)?)?;
            }
            Ok(Reply::Unit)
        }
        WriteOp::Record {
            table,
            kind,
            id,
            value,
        } => {
            let key = record_key(&kind, &id);
            let existed = t.get(table, &key)?.is_some();
            match value {
                Some(v) => t.put(table, &key, &v)?,
                None => t.delete(table, &key)?,
            }
            Ok(Reply::Existed(existed))
        }
        WriteOp::Put(table, key, value) => {
            t.put(table, &key, &value)?;
            Ok(Reply::Unit)
        }
        WriteOp::Batch(ops) => {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                match apply(t, op, max_log_bytes) {
                    Err(e) if !is_logical(&e) => return Err(e),
                    r => out.push(r),
                }
            }
            Ok(Reply::Batch(out))
        }
    }
}

/// A keyed record's key: its kind, a zero byte, its id.
pub(crate) fn record_key(kind: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(kind.len() + 1 + id.len());
    k.extend_from_slice(kind.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// One keyed record of `table`.
pub(crate) fn record(
    t: &dyn Tables,
    table: Table,
    kind: &str,
    id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    t.get(table, &record_key(kind, id))
}

/// Every keyed record of `kind` in `table`, by id.
pub(crate) fn records(
    t: &dyn Tables,
    table: Table,
    kind: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let from = record_key(kind, "");
    let to = prefix_end(&from);
    let mut out = Vec::new();
    t.scan(table, &from, to.as_deref(), &mut |k, v| {
        let id = String::from_utf8_lossy(&k[from.len()..]).into_owned();
        out.push((id, v.to_vec()));
        Ok(true)
    })?;
    Ok(out)
}

fn insert_job(t: &mut dyn TablesMut, job: Job, bytes: &[u8]) -> Result<Inserted, StoreError> {
    let idem = job
        .spec
        .idempotency_key
        .as_deref()
        .map(|k| idem_key(&job.spec.tenant, k));
    if let Some(k) = &idem
        && let Some(existing) = t.get(Table::Idempotency, k)?
        && let Some(id) = id_from(&existing)
        && let Some(j) = get_job(t, id)?
    {
        return Ok(Inserted::Existing(j));
    }
    let id = job.id.to_be_bytes();
    if t.get(Table::Jobs, &id)?.is_some() {
        return Err(StoreError::Duplicate(job.id));
    }
    t.put(Table::Jobs, &id, bytes)?;
    if let Some(k) = &idem {
        t.put(Table::Idempotency, k, &id)?;
    }
    t.put(
        Table::ByTenant,
        &tenant_key(&job.spec.tenant, Some(job.id)),
        &[],
    )?;
    t.put(
        Table::ByState,
        &state_key(StateKind::of(&job.state), job.id),
        &[],
    )?;
    if !job.is_terminal() {
        t.put(Table::Active, &id, &[])?;
    }
    Ok(Inserted::Created(job))
}

fn transition(
    t: &mut dyn TablesMut,
    id: JobId,
    expected: JobState,
    attempt: u32,
    tr: Transition,
    now: Timestamp,
) -> Result<Job, StoreError> {
    let mut job = get_job(t, id)?.ok_or(StoreError::UnknownJob(id))?;
    if job.state != expected || job.attempt != attempt {
        return Err(StoreError::Conflict {
            job: id,
            expected,
            expected_attempt: attempt,
            found: job.state,
            found_attempt: job.attempt,
        });
    }
    let before = StateKind::of(&job.state);
    job.transition(tr, now)?;
    if job.is_terminal() {
        // Nothing runs the job again: its secrets' values (sealed or not)
        // are no longer needed. The names stay.
        for s in &mut job.spec.secrets {
            s.value.clear();
        }
    }
    let key = id.to_be_bytes();
    t.put(Table::Jobs, &key, &encode("job", &job)?)?;
    let after = StateKind::of(&job.state);
    if before != after {
        t.delete(Table::ByState, &state_key(before, id))?;
        t.put(Table::ByState, &state_key(after, id), &[])?;
    }
    if job.is_terminal() {
        t.delete(Table::Active, &key)?;
    }
    Ok(job)
}

fn append_log(
    t: &mut dyn TablesMut,
    job: JobId,
    attempt: u32,
    seq: u64,
    chunk: LogChunk,
    max: u64,
) -> Result<LogAppend, StoreError> {
    let key = log_key(job, attempt, seq);
    if t.get(Table::Logs, &key)?.is_some() {
        return Ok(LogAppend::Duplicate);
    }
    let jk = job.to_be_bytes();
    let mut meta: LogMeta = match t.get(Table::LogMeta, &jk)? {
        Some(v) => decode("log meta", &v)?,
        None => LogMeta::default(),
    };
    let len = chunk.data.len() as u64;
    let result = if meta.stored_bytes.saturating_add(len) > max {
        meta.dropped_bytes = meta.dropped_bytes.saturating_add(len);
        LogAppend::Truncated
    } else {
        meta.stored_bytes += len;
        t.put(Table::Logs, &key, &encode("log chunk", &chunk)?)?;
        LogAppend::Stored
    };
    t.put(Table::LogMeta, &jk, &encode("log meta", &meta)?)?;
    Ok(result)
}

fn append_audit(t: &mut dyn TablesMut, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
    let (next, prev) = audit_head(t)?;
    let record = AuditRecord::new(next, entry, prev);
    t.put(
        Table::Audit,
        &next.to_be_bytes(),
        &encode("audit record", &record)?,
    )?;
    t.put(
        Table::Meta,
        AUDIT_HEAD_KEY,
        &encode("audit head", &(next + 1, record.hash))?,
    )?;
    Ok(record)
}

pub(crate) fn audit_head(t: &dyn Tables) -> Result<(u64, [u8; 32]), StoreError> {
    match t.get(Table::Meta, AUDIT_HEAD_KEY)? {
        Some(v) => decode("audit head", &v),
        None => Ok((0, [0; 32])),
    }
}

/// The job a tenant stored under an idempotency key, if any.
pub(crate) fn find_idempotent(
    t: &dyn Tables,
    tenant: &TenantId,
    key: &str,
) -> Result<Option<Job>, StoreError> {
    match t.get(Table::Idempotency, &idem_key(tenant, key))? {
        Some(v) => match id_from(&v) {
            Some(id) => get_job(t, id),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

pub(crate) fn get_job(t: &dyn Tables, id: JobId) -> Result<Option<Job>, StoreError> {
    t.get(Table::Jobs, &id.to_be_bytes())?
        .map(|v| crate::codec::decode_job(&v))
        .transpose()
}

/// Records one page may look at: a filter few jobs match (one tenant's
/// jobs in a state they are rarely in) ends the page early, with `next`
/// where the search stopped, rather than reading a whole index.
pub(crate) const SCAN_BUDGET: usize = 10_000;

pub(crate) fn list_jobs(t: &dyn Tables, filter: &JobFilter) -> Result<Page, StoreError> {
    let limit = filter.effective_limit();
    let mut jobs = Vec::new();
    let mut visited = 0usize;
    let mut stopped_at = None;
    let start_after = |prefix: Vec<u8>| {
        let mut from = prefix;
        if let Some(a) = filter.after {
            from.extend_from_slice(&a.to_be_bytes());
            from.push(0);
        }
        from
    };
    let mut visit = |key: &[u8], value: Option<&[u8]>| -> Result<bool, StoreError> {
        visited += 1;
        if visited > SCAN_BUDGET {
            // Resume after the last record looked at.
            return Ok(false);
        }
        stopped_at = id_from(key);
        let job: Job = match value {
            Some(v) => crate::codec::decode_job(v)?,
            None => match id_from(key).map(|id| get_job(t, id)).transpose()?.flatten() {
                Some(j) => j,
                None => return Ok(true),
            },
        };
        if filter.matches(&job) {
            jobs.push(job);
        }
        Ok(jobs.len() < limit)
    };
    if let Some(tenant) = &filter.tenant {
        let prefix = tenant_key(tenant, None);
        let end = prefix_end(&prefix);
        t.scan(
            Table::ByTenant,
            &start_after(prefix),
            end.as_deref(),
            &mut |k, _| visit(k, None),
        )?;
    } else if let Some(state) = filter.state {
        let prefix = vec![state.code()];
        let end = prefix_end(&prefix);
        t.scan(
            Table::ByState,
            &start_after(prefix),
            end.as_deref(),
            &mut |k, _| visit(k, None),
        )?;
    } else {
        t.scan(Table::Jobs, &start_after(Vec::new()), None, &mut |k, v| {
            visit(k, Some(v))
        })?;
    }
    let next = if jobs.len() == limit {
        jobs.last().map(|j| j.id)
    } else if visited > SCAN_BUDGET {
        stopped_at
    } else {
        None
    };
    Ok(Page { jobs, next })
}

pub(crate) fn attempts(t: &dyn Tables, job: JobId) -> Result<Vec<AttemptRecord>, StoreError> {
    let prefix = job.to_be_bytes();
    let end = prefix_end(&prefix);
    let mut out = Vec::new();
    t.scan(Table::Attempts, &prefix, end.as_deref(), &mut |_, v| {
        out.push(decode("attempt", v)?);
        Ok(true)
    })?;
    Ok(out)
}

pub(crate) fn read_logs(
    t: &dyn Tables,
    job: JobId,
    from: LogCursor,
    limit: usize,
) -> Result<LogPage, StoreError> {
    let limit = limit.clamp(1, 10_000);
    let start = log_key(job, from.attempt, from.seq);
    let end = prefix_end(&job.to_be_bytes());
    let mut entries = Vec::new();
    t.scan(Table::Logs, &start, end.as_deref(), &mut |k, v| {
        let attempt = u32::from_be_bytes([k[16], k[17], k[18], k[19]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&k[20..28]);
        entries.push(LogEntry {
            cursor: LogCursor {
                attempt,
                seq: u64::from_be_bytes(seq),
            },
            chunk: decode("log chunk", v)?,
        });
        Ok(entries.len() < limit)
    })?;
    let meta: LogMeta = match t.get(Table::LogMeta, &job.to_be_bytes())? {
        Some(v) => decode("log meta", &v)?,
        None => LogMeta::default(),
    };
    Ok(LogPage {
        entries,
        truncated_bytes: meta.dropped_bytes,
    })
}

pub(crate) fn audit_records(
    t: &dyn Tables,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut out = Vec::new();
    t.scan(Table::Audit, &from.to_be_bytes(), None, &mut |_, v| {
        out.push(decode("audit record", v)?);
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

pub(crate) fn verify_audit(t: &dyn Tables) -> Result<ChainCheck, StoreError> {
    let records = audit_records(t, 0, usize::MAX)?;
    Ok(check_chain(&records, audit_head(t)?))
}

/// Checks `records` (the whole chain, in order) and that they end where
/// the stored head (`count` written, the last hash) says: a chain cut off
/// at the end links perfectly, so only the head tells.
pub(crate) fn check_chain(records: &[AuditRecord], (count, head): (u64, [u8; 32])) -> ChainCheck {
    let check = verify_chain(records);
    if let ChainCheck::Intact { records: n } = check {
        let last = records.last().map_or([0; 32], |r| r.hash);
        if n != count || last != head {
            return ChainCheck::Broken {
                index: n.min(count),
                reason: format!("the chain holds {n} records but {count} were written"),
            };
        }
    }
    check
}

pub(crate) fn recover(t: &dyn Tables) -> Result<Vec<Job>, StoreError> {
    let mut ids = Vec::new();
    t.scan(Table::Active, &[], None, &mut |k, _| {
        if let Some(id) = id_from(k) {
            ids.push(id);
        }
        Ok(true)
    })?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(j) = get_job(t, id)? {
            jobs.push(j);
        }
    }
    Ok(jobs)
}
