//! The redb store (a real file and its log segment) against a model of
//! what a store must do, written here in plain maps and sharing no code
//! with the store's own operations, over random sequences of writes,
//! batches, reads, injected write failures and reopenings. Every answer
//! must match the model, and a failed write must leave no trace.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use hodei_core::{ExitStatus, Job, JobId, JobSpec, JobState, Timestamp, Transition, WorkerId};
use hodei_store::{
    AttemptPatch, AttemptRecord, Batch, Inserted, JobFilter, LogAppend, LogChunk, LogCursor,
    LogStream, RedbStore, Store, StoreConfig, StoreError, Written,
};
use libfuzzer_sys::fuzz_target;

const CAP: u64 = 300;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn transition(b: u8) -> Transition {
    let w = WorkerId::from_u128(u128::from(b % 3) + 1);
    let attempt = u32::from(b / 32 % 3);
    match b % 9 {
        0 => Transition::DependenciesMet,
        1 => Transition::Assign { worker: w },
        2 => Transition::Start { attempt },
        3 => Transition::Succeed { attempt },
        4 => Transition::Fail {
            attempt,
            exit: ExitStatus::Code(1),
        },
        5 => Transition::TimeOut { attempt },
        6 => Transition::Lose { attempt },
        7 => Transition::Cancel,
        _ => Transition::Retry,
    }
}

/// What a store must hold, kept the simplest way.
#[derive(Default, Clone)]
struct Model {
    jobs: BTreeMap<JobId, Job>,
    keys: HashMap<(String, String), JobId>,
    logs: BTreeMap<(JobId, u32, u64), LogChunk>,
    /// Per job: bytes kept, bytes dropped at the cap.
    log_bytes: HashMap<JobId, (u64, u64)>,
    attempts: BTreeMap<(JobId, u32), AttemptRecord>,
}

/// The model's answer to one write, in the store's terms.
#[derive(Debug, PartialEq)]
enum Answer {
    Created(Job),
    Existing(Job),
    Job(Job),
    Conflict,
    Refused,
    Unknown,
    Done,
}

fn answer_of(r: Result<Written, StoreError>) -> Answer {
    match r {
        Ok(Written::Inserted(Inserted::Created(j))) => Answer::Created(j),
        Ok(Written::Inserted(Inserted::Existing(j))) => Answer::Existing(j),
        Ok(Written::Job(j)) => Answer::Job(j),
        Ok(_) => Answer::Done,
        Err(e) => error_answer(&e),
    }
}

fn error_answer(e: &StoreError) -> Answer {
    match e {
        StoreError::Conflict { .. } => Answer::Conflict,
        StoreError::Transition(_) => Answer::Refused,
        StoreError::UnknownJob(_) => Answer::Unknown,
        other => panic!("unexpected store error: {other}"),
    }
}

impl Model {
    fn insert(&mut self, job: Job) -> Answer {
        let key = job
            .spec
            .idempotency_key
            .clone()
            .map(|k| (job.spec.tenant.as_str().to_string(), k));
        if let Some(k) = &key
            && let Some(id) = self.keys.get(k)
        {
            return Answer::Existing(self.jobs[id].clone());
        }
        if let Some(k) = key {
            self.keys.insert(k, job.id);
        }
        self.jobs.insert(job.id, job.clone());
        Answer::Created(job)
    }

    fn transition(
        &mut self,
        id: JobId,
        state: JobState,
        attempt: u32,
        t: Transition,
        now: Timestamp,
    ) -> Answer {
        let Some(job) = self.jobs.get(&id) else {
            return Answer::Unknown;
        };
        if job.state != state || job.attempt != attempt {
            return Answer::Conflict;
        }
        let mut next = job.clone();
        match next.transition(t, now) {
            Ok(_) => {
                self.jobs.insert(id, next.clone());
                Answer::Job(next)
            }
            Err(_) => Answer::Refused,
        }
    }

    fn append(&mut self, job: JobId, attempt: u32, seq: u64, chunk: LogChunk) -> LogAppend {
        if self.logs.contains_key(&(job, attempt, seq)) {
            return LogAppend::Duplicate;
        }
        let (kept, dropped) = self.log_bytes.entry(job).or_default();
        let len = chunk.data.len() as u64;
        if *kept + len > CAP {
            *dropped += len;
            return LogAppend::Truncated;
        }
        *kept += len;
        self.logs.insert((job, attempt, seq), chunk);
        LogAppend::Stored
    }

    fn patch(&mut self, job: JobId, attempt: u32, p: AttemptPatch) {
        if let Some(r) = self.attempts.get_mut(&(job, attempt)) {
            match p {
                AttemptPatch::Started { at } => r.started_at = Some(at),
                AttemptPatch::Finished {
                    at,
                    exit,
                    peak_memory_mb,
                } => {
                    r.finished_at = Some(at);
                    r.exit = Some(exit);
                    r.peak_memory_mb = Some(peak_memory_mb);
                }
                _ => {}
            }
        }
    }
}

fn record(job: JobId, attempt: u32, at: u64) -> AttemptRecord {
    AttemptRecord {
        job,
        attempt,
        worker: WorkerId::from_u128(7),
        assigned_at: Timestamp(at),
        started_at: None,
        finished_at: None,
        exit: None,
        peak_memory_mb: None,
    }
}

fn open(path: &Path) -> RedbStore {
    let config = {
        let mut c = StoreConfig::default();
        c.max_log_bytes_per_job = CAP;
        c.linger = std::time::Duration::ZERO;
        c
    };
    RedbStore::open(path, config).expect("the store reopens")
}

/// Everything the store holds equals the model.
async fn same(s: &RedbStore, m: &Model) {
    let page = s
        .list_jobs(JobFilter {
            limit: 10_000,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.jobs, m.jobs.values().cloned().collect::<Vec<_>>());
    let active: Vec<Job> = m
        .jobs
        .values()
        .filter(|j| !j.is_terminal())
        .cloned()
        .collect();
    assert_eq!(s.recover().await.expect("recover"), active);
    for ((tenant, key), id) in &m.keys {
        let found = s
            .find_idempotent(&tenant.parse().expect("tenant"), key)
            .await
            .expect("find");
        assert_eq!(found.map(|j| j.id), Some(*id));
    }
    for id in m.jobs.keys() {
        let page = s
            .read_logs(*id, LogCursor::default(), 10_000)
            .await
            .expect("logs");
        let want: Vec<_> = m
            .logs
            .range((*id, 0, 0)..=(*id, u32::MAX, u64::MAX))
            .collect();
        assert_eq!(page.entries.len(), want.len());
        for (e, ((_, a, q), c)) in page.entries.iter().zip(want) {
            assert_eq!((e.cursor.attempt, e.cursor.seq, &e.chunk), (*a, *q, c));
        }
        assert_eq!(page.truncated_bytes, m.log_bytes.get(id).map_or(0, |b| b.1));
        let attempts = s.attempts(*id).await.expect("attempts");
        let want: Vec<_> = m
            .attempts
            .range((*id, 0)..=(*id, u32::MAX))
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(attempts, want);
    }
}

fuzz_target!(|data: &[u8]| {
    // In memory when the machine has a tmpfs: fsync there costs nothing.
    let dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    };
    let Ok(dir) = dir else { return };
    let path = dir.path().join("f.redb");
    let mut redb = Some(open(&path));
    let mut m = Model::default();
    let mut ids: Vec<JobId> = Vec::new();
    let spec_for = |c: u8, b: u8| {
        let mut spec = JobSpec::argv(["true"]);
        spec.retry.max_attempts = u32::from(c % 3) + 1;
        spec.tenant = if c % 5 == 0 { "globex" } else { "acme" }
            .parse()
            .expect("tenant");
        if b % 2 == 0 {
            spec.idempotency_key = Some(format!("k{}", c % 4));
        }
        spec
    };
    rt().block_on(async {
        for (i, op) in data.chunks(3).take(64).enumerate() {
            let [a, b, c] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
            if a % 8 == 6 {
                // Reopen: what was acknowledged is there, nothing else.
                drop(redb.take());
                redb = Some(open(&path));
                continue;
            }
            let Some(s) = redb.as_ref() else { return };
            let now = Timestamp(i as u64);
            let pick = |ids: &Vec<JobId>| ids.get(b as usize % ids.len().max(1)).copied();
            // A write that fails leaves the model as it was.
            let inject = a >= 0xF0;
            let arm = || {
                if inject {
                    s.fail_next_commits(1);
                }
            };
            let before = m.clone();
            match a % 8 {
                0 => {
                    let job = Job::new(JobId::new(), spec_for(c, b), now);
                    arm();
                    let got = s.insert_job(job.clone()).await;
                    if inject {
                        assert!(matches!(got, Err(StoreError::Storage(_))), "{got:?}");
                    } else {
                        let want = m.insert(job);
                        assert_eq!(answer_of(got.map(Written::Inserted)), want);
                        if let Answer::Created(j) = want {
                            ids.push(j.id);
                        }
                    }
                }
                1 => {
                    let Some(id) = pick(&ids) else { continue };
                    let job = m.jobs[&id].clone();
                    // Now and then the caller's view is stale.
                    let attempt = if c % 7 == 0 {
                        job.attempt + 1
                    } else {
                        job.attempt
                    };
                    let t = transition(c);
                    arm();
                    let got = s.transition(id, job.state, attempt, t, now).await;
                    if inject {
                        assert!(matches!(got, Err(StoreError::Storage(_))), "{got:?}");
                    } else {
                        let got = match got {
                            Ok(j) => Answer::Job(j),
                            Err(e) => error_answer(&e),
                        };
                        assert_eq!(got, m.transition(id, job.state, attempt, t, now));
                    }
                }
                2 | 3 => {
                    let Some(id) = pick(&ids) else { continue };
                    let chunk = LogChunk {
                        stream: if c % 2 == 0 {
                            LogStream::Stdout
                        } else {
                            LogStream::Stderr
                        },
                        at: now,
                        data: vec![c; usize::from(c)],
                    };
                    let (attempt, seq) = (u32::from(b % 2) + 1, u64::from(c % 8));
                    arm();
                    let got = s.append_log(id, attempt, seq, chunk.clone()).await;
                    if inject {
                        assert!(matches!(got, Err(StoreError::Storage(_))), "{got:?}");
                    } else {
                        assert_eq!(got.expect("append"), m.append(id, attempt, seq, chunk));
                    }
                }
                4 => {
                    // A batch: a new job, a change to an old one, an
                    // attempt recorded and patched.
                    let mut batch = Batch::new();
                    let mut want = Vec::new();
                    let mut shadow = m.clone();
                    let job = Job::new(JobId::new(), spec_for(c, b.wrapping_add(1)), now);
                    batch.insert_job(job.clone()).expect("encode");
                    want.push(shadow.insert(job.clone()));
                    if let Some(id) = pick(&ids) {
                        let j = shadow.jobs[&id].clone();
                        let t = transition(c.rotate_left(3));
                        batch.transition(id, j.state, j.attempt, t, now);
                        want.push(shadow.transition(id, j.state, j.attempt, t, now));
                        batch.record_attempt(record(id, u32::from(c % 3), i as u64));
                        shadow.attempts.insert(
                            (id, u32::from(c % 3)),
                            record(id, u32::from(c % 3), i as u64),
                        );
                        want.push(Answer::Done);
                        let p = AttemptPatch::Started { at: now };
                        batch.patch_attempt(id, u32::from(b % 3), p);
                        shadow.patch(id, u32::from(b % 3), p);
                        want.push(Answer::Done);
                    }
                    arm();
                    let got = s.enqueue(batch).await.expect("enqueue").await;
                    if inject {
                        assert!(matches!(got, Err(StoreError::Storage(_))), "{got:?}");
                    } else {
                        let got: Vec<Answer> =
                            got.expect("commit").into_iter().map(answer_of).collect();
                        assert_eq!(got, want);
                        if let Answer::Created(j) = &want[0] {
                            ids.push(j.id);
                        }
                        m = shadow;
                    }
                }
                5 => {
                    let Some(id) = pick(&ids) else { continue };
                    let from = LogCursor {
                        attempt: u32::from(c % 3),
                        seq: u64::from(c / 3 % 8),
                    };
                    let limit = usize::from(b % 5) + 1;
                    let page = s.read_logs(id, from, limit).await.expect("read");
                    let want: Vec<_> = m
                        .logs
                        .range((id, from.attempt, from.seq)..=(id, u32::MAX, u64::MAX))
                        .take(limit)
                        .map(|((_, a, q), _)| (*a, *q))
                        .collect();
                    let got: Vec<_> = page
                        .entries
                        .iter()
                        .map(|e| (e.cursor.attempt, e.cursor.seq))
                        .collect();
                    assert_eq!(got, want);
                }
                _ => {}
            }
            if inject || a % 8 == 7 {
                // Whatever a failed write was, nothing of it is kept.
                same(s, &m).await;
                assert_eq!(m.jobs, before.jobs);
            }
        }
        if let Some(s) = redb.as_ref() {
            same(s, &m).await;
        }
    });
});
