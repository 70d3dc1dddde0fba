//! A batch's view of the database: the records its writes read, fetched
//! in one pipelined round trip, and what they wrote, flushed with one
//! statement per table.
//!
//! The store's operations (`ops`) are written once over raw keyed tables;
//! here those tables are mapped onto the relational schema. The index
//! tables the embedded stores keep by hand (by tenant, by state, active,
//! idempotency) are columns of `hodei_jobs` here, kept by its indexes, so
//! writes to them only serve later reads in the same batch.

use std::collections::{BTreeMap, HashMap, HashSet};

use hodei_core::{Job, JobId, LogStream, Timestamp};
use tokio_postgres::Transaction;

use crate::audit::AuditRecord;
use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::model::{LogChunk, LogMeta, StateKind};
use crate::ops::{self, Need, Table, Tables, TablesMut, Visit};

use super::{Statements, pg_error};

type Rows = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// Records known to the batch (`None`: known to be absent) and the
/// records it wrote (`None`: deleted).
#[derive(Default)]
pub(super) struct Overlay {
    known: HashMap<Table, Rows>,
    dirty: HashMap<Table, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

/// Tables that are columns and indexes of `hodei_jobs` in the database.
fn derived(t: Table) -> bool {
    matches!(
        t,
        Table::ByTenant | Table::ByState | Table::Active | Table::Idempotency
    )
}

impl Tables for Overlay {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.known.get(&t).and_then(|rows| rows.get(key)) {
            Some(v) => Ok(v.clone()),
            // `ops::needs` and `ops::apply` disagree: a bug, not data.
            None => Err(StoreError::storage_message(format!(
                "internal: a write read {} record {key:02x?} it did not fetch",
                t.name()
            ))),
        }
    }

    fn scan(&self, t: Table, _: &[u8], _: Option<&[u8]>, _: Visit<'_>) -> Result<(), StoreError> {
        Err(StoreError::storage_message(format!(
            "internal: a write scanned {}",
            t.name()
        )))
    }
}

impl TablesMut for Overlay {
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.set(t, key, Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, t: Table, key: &[u8]) -> Result<(), StoreError> {
        self.set(t, key, None);
        Ok(())
    }
}

impl Overlay {
    fn set(&mut self, t: Table, key: &[u8], value: Option<Vec<u8>>) {
        if !derived(t) {
            self.dirty
                .entry(t)
                .or_default()
                .insert(key.to_vec(), value.clone());
        }
        if !matches!(t, Table::ByTenant | Table::ByState | Table::Active) {
            self.known.entry(t).or_default().insert(key.to_vec(), value);
        }
    }

    fn know(&mut self, t: Table, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.known.entry(t).or_default().insert(key, value);
    }

    /// Fetches every record `needs` names in one pipelined round trip.
    pub(super) async fn fetch(
        &mut self,
        txn: &Transaction<'_>,
        st: &Statements,
        needs: Vec<Need>,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let mut jobs = Vec::new();
        let (mut idem_t, mut idem_k) = (Vec::new(), Vec::new());
        let (mut log_j, mut log_a, mut log_s) = (Vec::new(), Vec::new(), Vec::new());
        let mut metas = Vec::new();
        let mut head = false;
        let (mut att_j, mut att_a) = (Vec::new(), Vec::new());
        let (mut cred_k, mut cred_i) = (Vec::new(), Vec::new());
        let (mut rec_k, mut rec_i) = (Vec::new(), Vec::new());
        for n in needs {
            if !seen.insert(n.clone()) {
                continue;
            }
            // Absent unless the database says otherwise.
            match n {
                Need::Job(id) => {
                    self.know(Table::Jobs, id.to_be_bytes().to_vec(), None);
                    jobs.push(id.to_be_bytes().to_vec());
                }
                Need::Idempotency(tenant, key) => {
                    self.know(Table::Idempotency, ops::idem_key(&tenant, &key), None);
                    idem_t.push(tenant.as_str().to_string());
                    idem_k.push(key);
                }
                Need::Log(job, attempt, seq) => {
                    self.know(Table::Logs, ops::log_key(job, attempt, seq).to_vec(), None);
                    log_j.push(job.to_be_bytes().to_vec());
                    log_a.push(i64::from(attempt));
                    log_s.push(seq as i64);
                }
                Need::LogMeta(job) => {
                    self.know(Table::LogMeta, job.to_be_bytes().to_vec(), None);
                    metas.push(job.to_be_bytes().to_vec());
                }
                Need::AuditHead => {
                    self.know(Table::Meta, ops::AUDIT_HEAD_KEY.to_vec(), None);
                    head = true;
                }
                Need::Attempt(job, attempt) => {
                    self.know(
                        Table::Attempts,
                        ops::attempt_key(job, attempt).to_vec(),
                        None,
                    );
                    att_j.push(job.to_be_bytes().to_vec());
                    att_a.push(i64::from(attempt));
                }
                Need::Record(table, kind, id) => {
                    self.know(table, ops::record_key(&kind, &id), None);
                    let (k, i) = if table == Table::Records {
                        (&mut rec_k, &mut rec_i)
                    } else {
                        (&mut cred_k, &mut cred_i)
                    };
                    k.push(kind);
                    i.push(id);
                }
            }
        }
        let head_key: Vec<Vec<u8>> = vec![ops::AUDIT_HEAD_KEY.to_vec()];
        let (r_jobs, r_idem, r_logs, r_metas, r_head, r_att, r_cred, r_rec) = tokio::try_join!(
            query(txn, st, "fetch_jobs", vec![&jobs], !jobs.is_empty()),
            query(
                txn,
                st,
                "fetch_idem",
                vec![&idem_t, &idem_k],
                !idem_t.is_empty()
            ),
            query(
                txn,
                st,
                "fetch_logs",
                vec![&log_j, &log_a, &log_s],
                !log_j.is_empty()
            ),
            query(txn, st, "fetch_log_meta", vec![&metas], !metas.is_empty()),
            query(txn, st, "fetch_meta", vec![&head_key], head),
            query(
                txn,
                st,
                "fetch_attempts",
                vec![&att_j, &att_a],
                !att_j.is_empty()
            ),
            query(
                txn,
                st,
                "fetch_credentials",
                vec![&cred_k, &cred_i],
                !cred_k.is_empty()
            ),
            query(
                txn,
                st,
                "fetch_records",
                vec![&rec_k, &rec_i],
                !rec_k.is_empty()
            ),
        )?;
        for r in r_jobs {
            self.know(Table::Jobs, r.get(0), Some(r.get(1)));
        }
        for r in r_idem {
            let (tenant, key, id): (String, String, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
            let tenant = tenant
                .parse()
                .map_err(|_| StoreError::storage_message(format!("stored tenant {tenant:?}")))?;
            self.know(
                Table::Idempotency,
                ops::idem_key(&tenant, &key),
                Some(id.clone()),
            );
            self.know(Table::Jobs, id, Some(r.get(3)));
        }
        for r in r_logs {
            let job = job_id(&r.get::<_, Vec<u8>>(0))?;
            let key = ops::log_key(job, attempt(r.get(1))?, r.get::<_, i64>(2) as u64);
            self.know(Table::Logs, key.to_vec(), Some(Vec::new()));
        }
        for r in r_metas {
            let meta = LogMeta {
                stored_bytes: r.get::<_, i64>(1) as u64,
                dropped_bytes: r.get::<_, i64>(2) as u64,
            };
            self.know(Table::LogMeta, r.get(0), Some(encode("log meta", &meta)?));
        }
        for r in r_head {
            self.know(Table::Meta, r.get(0), Some(r.get(1)));
        }
        for r in r_att {
            let job = job_id(&r.get::<_, Vec<u8>>(0))?;
            let key = ops::attempt_key(job, attempt(r.get(1))?);
            self.know(Table::Attempts, key.to_vec(), Some(r.get(2)));
        }
        for (table, rows) in [(Table::Credentials, r_cred), (Table::Records, r_rec)] {
            for r in rows {
                let (kind, id): (String, String) = (r.get(0), r.get(1));
                self.know(table, ops::record_key(&kind, &id), Some(r.get(2)));
            }
        }
        Ok(())
    }

    /// Writes what the batch changed, one statement per table, pipelined.
    pub(super) async fn flush(
        self,
        txn: &Transaction<'_>,
        st: &Statements,
    ) -> Result<(), StoreError> {
        let mut jobs = JobRows::default();
        let mut atts = (Vec::new(), Vec::new(), Vec::new());
        let mut logs = LogRows::default();
        let mut metas = (Vec::new(), Vec::new(), Vec::new());
        let mut audit = AuditRows::default();
        let mut meta = (Vec::new(), Vec::new());
        let mut creds = (Vec::new(), Vec::new(), Vec::new());
        let mut gone = (Vec::new(), Vec::new());
        let mut recs = (Vec::new(), Vec::new(), Vec::new());
        let mut recs_gone = (Vec::new(), Vec::new());
        for (table, rows) in self.dirty {
            for (key, value) in rows {
                match (table, value) {
                    (Table::Jobs, Some(v)) => jobs.push(key, v)?,
                    (Table::Attempts, Some(v)) => {
                        let (job, a) = split_attempt_key(&key)?;
                        atts.0.push(job);
                        atts.1.push(a);
                        atts.2.push(v);
                    }
                    (Table::Logs, Some(v)) => logs.push(&key, &v)?,
                    (Table::LogMeta, Some(v)) => {
                        let m: LogMeta = decode("log meta", &v)?;
                        metas.0.push(key);
                        metas.1.push(m.stored_bytes as i64);
                        metas.2.push(m.dropped_bytes as i64);
                    }
                    (Table::Audit, Some(v)) => audit.push(&key, v)?,
                    (Table::Meta, Some(v)) => {
                        meta.0.push(key);
                        meta.1.push(v);
                    }
                    (Table::Credentials | Table::Records, value) => {
                        let (kind, id) = split_record_key(&key)?;
                        let (put, del) = if table == Table::Records {
                            (&mut recs, &mut recs_gone)
                        } else {
                            (&mut creds, &mut gone)
                        };
                        match value {
                            Some(v) => {
                                put.0.push(kind);
                                put.1.push(id);
                                put.2.push(v);
                            }
                            None => {
                                del.0.push(kind);
                                del.1.push(id);
                            }
                        }
                    }
                    (t, v) => {
                        return Err(StoreError::storage_message(format!(
                            "internal: {} of a {} record",
                            if v.is_some() { "write" } else { "delete" },
                            t.name()
                        )));
                    }
                }
            }
        }
        tokio::try_join!(
            execute(
                txn,
                st,
                "put_jobs",
                vec![
                    &jobs.id,
                    &jobs.tenant,
                    &jobs.state,
                    &jobs.active,
                    &jobs.idem,
                    &jobs.body
                ],
                !jobs.id.is_empty()
            ),
            execute(
                txn,
                st,
                "put_attempts",
                vec![&atts.0, &atts.1, &atts.2],
                !atts.0.is_empty()
            ),
            execute(
                txn,
                st,
                "put_logs",
                vec![
                    &logs.job,
                    &logs.attempt,
                    &logs.seq,
                    &logs.stream,
                    &logs.at,
                    &logs.data
                ],
                !logs.job.is_empty()
            ),
            execute(
                txn,
                st,
                "put_log_meta",
                vec![&metas.0, &metas.1, &metas.2],
                !metas.0.is_empty()
            ),
            execute(
                txn,
                st,
                "put_audit",
                vec![
                    &audit.seq,
                    &audit.actor,
                    &audit.action,
                    &audit.target,
                    &audit.hash,
                    &audit.body
                ],
                !audit.seq.is_empty()
            ),
            execute(
                txn,
                st,
                "put_meta",
                vec![&meta.0, &meta.1],
                !meta.0.is_empty()
            ),
            execute(
                txn,
                st,
                "put_credentials",
                vec![&creds.0, &creds.1, &creds.2],
                !creds.0.is_empty()
            ),
            execute(
                txn,
                st,
                "delete_credentials",
                vec![&gone.0, &gone.1],
                !gone.0.is_empty()
            ),
            execute(
                txn,
                st,
                "put_records",
                vec![&recs.0, &recs.1, &recs.2],
                !recs.0.is_empty()
            ),
            execute(
                txn,
                st,
                "delete_records",
                vec![&recs_gone.0, &recs_gone.1],
                !recs_gone.0.is_empty()
            ),
        )?;
        Ok(())
    }
}

#[derive(Default)]
struct JobRows {
    id: Vec<Vec<u8>>,
    tenant: Vec<String>,
    state: Vec<i16>,
    active: Vec<bool>,
    idem: Vec<Option<String>>,
    body: Vec<Vec<u8>>,
}

impl JobRows {
    fn push(&mut self, key: Vec<u8>, body: Vec<u8>) -> Result<(), StoreError> {
        let job: Job = crate::codec::decode_job(&body)?;
        self.id.push(key);
        self.tenant.push(job.spec.tenant.as_str().to_string());
        self.state.push(i16::from(StateKind::of(&job.state).code()));
        self.active.push(!job.is_terminal());
        self.idem.push(job.spec.idempotency_key.clone());
        self.body.push(body);
        Ok(())
    }
}

#[derive(Default)]
struct LogRows {
    job: Vec<Vec<u8>>,
    attempt: Vec<i64>,
    seq: Vec<i64>,
    stream: Vec<i16>,
    at: Vec<i64>,
    data: Vec<Vec<u8>>,
}

impl LogRows {
    fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let chunk: LogChunk = decode("log chunk", value)?;
        let bad = || StoreError::storage_message("internal: a log key of the wrong length");
        let job = key.get(..16).ok_or_else(bad)?;
        let a: [u8; 4] = key
            .get(16..20)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let s: [u8; 8] = key
            .get(20..28)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        self.job.push(job.to_vec());
        self.attempt.push(i64::from(u32::from_be_bytes(a)));
        // Sequence numbers past 2^63 are kept exactly but order before 0.
        self.seq.push(u64::from_be_bytes(s) as i64);
        self.stream.push(stream_code(chunk.stream));
        self.at.push(chunk.at.0 as i64);
        self.data.push(chunk.data);
        Ok(())
    }
}

#[derive(Default)]
struct AuditRows {
    seq: Vec<i64>,
    actor: Vec<String>,
    action: Vec<String>,
    target: Vec<String>,
    hash: Vec<Vec<u8>>,
    body: Vec<Vec<u8>>,
}

impl AuditRows {
    fn push(&mut self, key: &[u8], body: Vec<u8>) -> Result<(), StoreError> {
        let r: AuditRecord = decode("audit record", &body)?;
        let seq: [u8; 8] = key.try_into().map_err(|_| {
            StoreError::storage_message("internal: an audit key of the wrong length")
        })?;
        self.seq.push(u64::from_be_bytes(seq) as i64);
        self.actor.push(r.entry.actor);
        self.action.push(r.entry.action);
        self.target.push(r.entry.target);
        self.hash.push(r.hash.to_vec());
        self.body.push(body);
        Ok(())
    }
}

pub(super) fn stream_code(s: LogStream) -> i16 {
    match s {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::System => 2,
    }
}

pub(super) fn stream_of(code: i16) -> Result<LogStream, StoreError> {
    match code {
        0 => Ok(LogStream::Stdout),
        1 => Ok(LogStream::Stderr),
        2 => Ok(LogStream::System),
        c => Err(StoreError::storage_message(format!("log stream code {c}"))),
    }
}

/// Rebuilds a log chunk from its columns.
pub(super) fn chunk(stream: i16, at: i64, data: Vec<u8>) -> Result<LogChunk, StoreError> {
    Ok(LogChunk {
        stream: stream_of(stream)?,
        at: Timestamp(at as u64),
        data,
    })
}

pub(super) fn job_id(bytes: &[u8]) -> Result<JobId, StoreError> {
    let b: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::storage_message(format!("a job id of {} bytes", bytes.len())))?;
    Ok(JobId::from_u128(u128::from_be_bytes(b)))
}

pub(super) fn attempt(a: i64) -> Result<u32, StoreError> {
    u32::try_from(a).map_err(|_| StoreError::storage_message(format!("attempt {a}")))
}

fn split_attempt_key(key: &[u8]) -> Result<(Vec<u8>, i64), StoreError> {
    let bad = || StoreError::storage_message("internal: an attempt key of the wrong length");
    let a: [u8; 4] = key
        .get(16..20)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    Ok((
        key.get(..16).ok_or_else(bad)?.to_vec(),
        i64::from(u32::from_be_bytes(a)),
    ))
}

fn split_record_key(key: &[u8]) -> Result<(String, String), StoreError> {
    let at = key
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| StoreError::storage_message("internal: a record key without a kind"))?;
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec())
            .map_err(|_| StoreError::storage_message("a record key that is not UTF-8"))
    };
    Ok((text(&key[..at])?, text(&key[at + 1..])?))
}

type Params<'a> = Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>;

fn statement<'s>(
    st: &'s Statements,
    name: &str,
) -> Result<&'s tokio_postgres::Statement, StoreError> {
    st.get(name)
        .ok_or_else(|| StoreError::storage_message(format!("internal: no statement {name}")))
}

/// Runs a prepared query, or nothing when there is nothing to ask.
async fn query(
    txn: &Transaction<'_>,
    st: &Statements,
    name: &str,
    params: Params<'_>,
    go: bool,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    if !go {
        return Ok(Vec::new());
    }
    txn.query(statement(st, name)?, &params)
        .await
        .map_err(pg_error)
}

/// Runs a prepared statement, or nothing when there is nothing to write.
async fn execute(
    txn: &Transaction<'_>,
    st: &Statements,
    name: &str,
    params: Params<'_>,
    go: bool,
) -> Result<u64, StoreError> {
    if !go {
        return Ok(0);
    }
    txn.execute(statement(st, name)?, &params)
        .await
        .map_err(pg_error)
}
