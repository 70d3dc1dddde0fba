//! One suite, run against every Store implementation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use hodei_core::{ExitStatus, Job, JobId, JobSpec, JobState, Timestamp, Transition, WorkerId};
use hodei_store::{
    AttemptPatch, AttemptRecord, AuditEntry, Batch, ChainCheck, JobFilter, LogAppend, LogChunk,
    LogCursor, LogStream, MemStore, RedbStore, StateKind, Store, StoreConfig, StoreError, Written,
};

fn config() -> StoreConfig {
    {
        let mut c = StoreConfig::default();
        c.max_log_bytes_per_job = 1000;
        c
    }
}

fn job(tenant: &str, key: Option<&str>) -> Job {
    let mut spec = JobSpec::argv(["true"]);
    spec.tenant = tenant.parse().unwrap();
    spec.idempotency_key = key.map(String::from);
    spec.retry.max_attempts = 2;
    Job::new(JobId::new(), spec, Timestamp(1))
}

fn chunk(data: &[u8]) -> LogChunk {
    LogChunk {
        stream: LogStream::Stdout,
        at: Timestamp(5),
        data: data.to_vec(),
    }
}

async fn insert_get_and_idempotency<S: Store>(s: S) {
    let a = job("acme", Some("deploy-42"));
    assert!(s.insert_job(a.clone()).await.unwrap().is_new());
    assert_eq!(s.get_job(a.id).await.unwrap(), Some(a.clone()));
    // Same key, same tenant: the first job comes back.
    let again = s.insert_job(job("acme", Some("deploy-42"))).await.unwrap();
    assert!(!again.is_new());
    assert_eq!(again.job().id, a.id);
    // Same key, another tenant: a new job.
    assert!(
        s.insert_job(job("globex", Some("deploy-42")))
            .await
            .unwrap()
            .is_new()
    );
    // Same id without the key: refused, not overwritten.
    let mut same_id = job("acme", None);
    same_id.id = a.id;
    assert!(matches!(
        s.insert_job(same_id).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(s.get_job(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.get_job(JobId::new()).await.unwrap(), None);
}

async fn compare_and_set_transitions<S: Store>(s: S) {
    let j = job("acme", None);
    let id = j.id;
    s.insert_job(j).await.unwrap();
    let w = WorkerId::new();
    let assigned = s
        .transition(
            id,
            JobState::Queued,
            1,
            Transition::Assign { worker: w },
            Timestamp(2),
        )
        .await
        .unwrap();
    assert_eq!(
        assigned.state,
        JobState::Assigned {
            worker: w,
            attempt: 1
        }
    );
    assert_eq!(assigned.updated_at, Timestamp(2));
    // Expected state no longer true: a clean conflict, nothing changed.
    let err = s
        .transition(
            id,
            JobState::Queued,
            1,
            Transition::Assign { worker: w },
            Timestamp(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    // Wrong attempt: conflict too.
    let err = s
        .transition(
            id,
            assigned.state,
            2,
            Transition::Start { attempt: 2 },
            Timestamp(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    // Illegal for the state machine: refused.
    let err = s
        .transition(
            id,
            assigned.state,
            1,
            Transition::Succeed { attempt: 1 },
            Timestamp(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)));
    assert_eq!(s.get_job(id).await.unwrap().unwrap().state, assigned.state);
    let missing = s
        .transition(
            JobId::new(),
            JobState::Queued,
            1,
            Transition::Cancel,
            Timestamp(3),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::UnknownJob(_))));
}

async fn lists_page_and_filter<S: Store>(s: S) {
    let mut ids = Vec::new();
    for i in 0..25 {
        let j = job(if i % 2 == 0 { "acme" } else { "globex" }, None);
        ids.push(j.id);
        s.insert_job(j).await.unwrap();
    }
    s.transition(
        ids[0],
        JobState::Queued,
        1,
        Transition::Cancel,
        Timestamp(2),
    )
    .await
    .unwrap();
    // All, in pages of 10, in id order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .list_jobs(JobFilter {
                after,
                limit: 10,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let acme = s
        .list_jobs(JobFilter {
            tenant: Some("acme".parse().unwrap()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(acme.jobs.len(), 13);
    assert!(acme.jobs.iter().all(|j| j.spec.tenant.as_str() == "acme"));
    let cancelled = s
        .list_jobs(JobFilter {
            state: Some(StateKind::Cancelled),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        cancelled.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let acme_queued = s
        .list_jobs(JobFilter {
            tenant: Some("acme".parse().unwrap()),
            state: Some(StateKind::Queued),
            limit: 5,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(acme_queued.jobs.len(), 5);
    assert!(acme_queued.next.is_some());
}

async fn logs_are_idempotent_ordered_and_capped<S: Store>(s: S) {
    let id = JobId::new();
    for seq in [2u64, 0, 1] {
        let r = s
            .append_log(id, 1, seq, chunk(format!("line {seq}\n").as_bytes()))
            .await
            .unwrap();
        assert_eq!(r, LogAppend::Stored);
    }
    assert_eq!(
        s.append_log(id, 1, 1, chunk(b"again")).await.unwrap(),
        LogAppend::Duplicate
    );
    s.append_log(id, 2, 0, chunk(b"retry\n")).await.unwrap();
    let page = s.read_logs(id, LogCursor::default(), 100).await.unwrap();
    let text: Vec<u8> = page
        .entries
        .iter()
        .flat_map(|e| e.chunk.data.clone())
        .collect();
    assert_eq!(text, b"line 0\nline 1\nline 2\nretry\n");
    assert_eq!(page.truncated_bytes, 0);
    let from = s
        .read_logs(id, LogCursor { attempt: 1, seq: 2 }, 1)
        .await
        .unwrap();
    assert_eq!(from.entries.len(), 1);
    assert_eq!(from.entries[0].cursor, LogCursor { attempt: 1, seq: 2 });
    // The cap (1000 bytes in this suite) drops and counts the rest.
    let big = vec![b'x'; 600];
    assert_eq!(
        s.append_log(id, 2, 1, chunk(&big)).await.unwrap(),
        LogAppend::Stored
    );
    assert_eq!(
        s.append_log(id, 2, 2, chunk(&big)).await.unwrap(),
        LogAppend::Truncated
    );
    let page = s.read_logs(id, LogCursor::default(), 100).await.unwrap();
    assert_eq!(page.truncated_bytes, 600);
    assert_eq!(page.entries.len(), 5);
    // Other jobs' logs are separate.
    assert!(
        s.read_logs(JobId::new(), LogCursor::default(), 10)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
}

async fn attempts_are_recorded<S: Store>(s: S) {
    let id = JobId::new();
    let w = WorkerId::new();
    for a in [1u32, 2] {
        s.record_attempt(AttemptRecord {
            job: id,
            attempt: a,
            worker: w,
            assigned_at: Timestamp(a as u64),
            started_at: Some(Timestamp(10)),
            finished_at: Some(Timestamp(20)),
            exit: Some(ExitStatus::Code(a as i32)),
            peak_memory_mb: Some(64),
        })
        .await
        .unwrap();
    }
    let got = s.attempts(id).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(got[1].exit, Some(ExitStatus::Code(2)));
}

async fn audit_chain_holds<S: Store>(s: S) {
    for i in 0..5 {
        let r = s
            .append_audit(AuditEntry {
                at: Timestamp(i),
                actor: "acme".into(),
                action: "submit".into(),
                detail: format!("job {i}"),
                ..AuditEntry::default()
            })
            .await
            .unwrap();
        assert_eq!(r.index, i);
    }
    assert_eq!(
        s.verify_audit().await.unwrap(),
        ChainCheck::Intact { records: 5 }
    );
    // In a batch, with the writes it records: chained after the others.
    let mut b = Batch::new();
    let w = b.append_audit(AuditEntry {
        action: "drain".into(),
        ..AuditEntry::default()
    });
    let out = s.enqueue(b).await.unwrap().await.unwrap();
    assert!(matches!(&out[w], Ok(Written::Audit(r)) if r.index == 5));
    assert_eq!(
        s.verify_audit().await.unwrap(),
        ChainCheck::Intact { records: 6 }
    );
    let recs = s.audit_records(3, 2).await.unwrap();
    assert_eq!(recs.iter().map(|r| r.index).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(recs[0].prev, s.audit_records(2, 1).await.unwrap()[0].hash);
}

async fn recovery_returns_unfinished_jobs<S: Store>(s: S) {
    let w = WorkerId::new();
    let queued = job("acme", None);
    let running = job("acme", None);
    let done = job("acme", None);
    let failed_once = job("acme", None);
    for j in [&queued, &running, &done, &failed_once] {
        s.insert_job(j.clone()).await.unwrap();
    }
    let assign = |j: &Job| (j.id, Transition::Assign { worker: w });
    for (id, t) in [assign(&running), assign(&done), assign(&failed_once)] {
        s.transition(id, JobState::Queued, 1, t, Timestamp(2))
            .await
            .unwrap();
    }
    let a = JobState::Assigned {
        worker: w,
        attempt: 1,
    };
    for id in [running.id, done.id, failed_once.id] {
        s.transition(id, a, 1, Transition::Start { attempt: 1 }, Timestamp(3))
            .await
            .unwrap();
    }
    let r = JobState::Running {
        worker: w,
        attempt: 1,
    };
    s.transition(
        done.id,
        r,
        1,
        Transition::Succeed { attempt: 1 },
        Timestamp(4),
    )
    .await
    .unwrap();
    // Failed with an attempt left is not final.
    s.transition(
        failed_once.id,
        r,
        1,
        Transition::Fail {
            attempt: 1,
            exit: ExitStatus::Code(1),
        },
        Timestamp(4),
    )
    .await
    .unwrap();
    let recovered: Vec<JobId> = s.recover().await.unwrap().iter().map(|j| j.id).collect();
    let mut want = vec![queued.id, running.id, failed_once.id];
    want.sort();
    assert_eq!(recovered, want);
}

async fn concurrent_writers_all_land<S: Store + Clone>(s: S) {
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..20 {
                let j = job("acme", None);
                ids.push(j.id);
                s.insert_job(j).await.unwrap();
            }
            ids
        }));
    }
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(s.get_job(id).await.unwrap().is_some());
        }
    }
}

/// A batch lands in one piece, in order, each write with its own outcome;
/// a job can be stored already past Queued.
async fn batches_keep_order_and_their_own_outcomes<S: Store>(s: S) {
    let w = WorkerId::new();
    let mut placed = job("acme", Some("k1"));
    placed
        .transition(Transition::Assign { worker: w }, Timestamp(2))
        .unwrap();
    let other = job("acme", None);
    s.insert_job(other.clone()).await.unwrap();

    let mut b = Batch::new();
    let i_insert = b.insert_job(placed.clone()).unwrap();
    let i_record = b.record_attempt(AttemptRecord {
        job: placed.id,
        attempt: 1,
        worker: w,
        assigned_at: Timestamp(2),
        started_at: None,
        finished_at: None,
        exit: None,
        peak_memory_mb: None,
    });
    // Refused (wrong expected state): fails alone.
    let i_refused = b.transition(
        other.id,
        JobState::Running {
            worker: w,
            attempt: 1,
        },
        1,
        Transition::Cancel,
        Timestamp(3),
    );
    let i_cancel = b.transition(
        other.id,
        JobState::Queued,
        1,
        Transition::Cancel,
        Timestamp(3),
    );
    let i_patch = b.patch_attempt(placed.id, 1, AttemptPatch::Started { at: Timestamp(4) });
    assert_eq!(b.len(), 5);
    let out = s.enqueue(b).await.unwrap().await.unwrap();
    assert_eq!(out.len(), 5);
    match &out[i_insert] {
        Ok(Written::Inserted(i)) => {
            assert!(i.is_new());
            assert_eq!(
                i.job().state,
                JobState::Assigned {
                    worker: w,
                    attempt: 1
                }
            );
        }
        other => panic!("insert: {other:?}"),
    }
    assert_eq!(out[i_record].as_ref().unwrap(), &Written::Done);
    assert!(matches!(out[i_refused], Err(StoreError::Conflict { .. })));
    match &out[i_cancel] {
        Ok(Written::Job(j)) => assert_eq!(j.state, JobState::Cancelled),
        other => panic!("cancel: {other:?}"),
    }
    assert_eq!(out[i_patch].as_ref().unwrap(), &Written::Done);
    let rec = s.attempts(placed.id).await.unwrap();
    assert_eq!(rec[0].started_at, Some(Timestamp(4)));
    assert_eq!(
        s.get_job(placed.id).await.unwrap().unwrap().state,
        JobState::Assigned {
            worker: w,
            attempt: 1
        }
    );
    // Stored assigned, it is active: recovery returns it.
    assert!(s.recover().await.unwrap().iter().any(|j| j.id == placed.id));
    assert_eq!(
        s.find_idempotent(&"acme".parse().unwrap(), "k1")
            .await
            .unwrap()
            .map(|j| j.id),
        Some(placed.id)
    );
    assert_eq!(
        s.find_idempotent(&"globex".parse().unwrap(), "k1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.find_idempotent(&"acme".parse().unwrap(), "k2")
            .await
            .unwrap(),
        None
    );
    // Patching an attempt with no record writes nothing.
    let mut b = Batch::new();
    b.patch_attempt(other.id, 7, AttemptPatch::Started { at: Timestamp(9) });
    s.enqueue(b).await.unwrap().await.unwrap();
    assert!(s.attempts(other.id).await.unwrap().is_empty());
}

/// Batches queued one after another without waiting are applied in the
/// order queued: each step's compare-and-set finds the state the one
/// before it left.
async fn queued_batches_apply_in_order<S: Store>(s: S) {
    let w = WorkerId::new();
    let mut commits = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let j = job("acme", None);
        ids.push(j.id);
        let mut b = Batch::new();
        b.insert_job(j.clone()).unwrap();
        commits.push(s.enqueue(b).await.unwrap());
        let mut b = Batch::new();
        b.transition(
            j.id,
            JobState::Queued,
            1,
            Transition::Assign { worker: w },
            Timestamp(2),
        );
        commits.push(s.enqueue(b).await.unwrap());
        let mut b = Batch::new();
        b.transition(
            j.id,
            JobState::Assigned {
                worker: w,
                attempt: 1,
            },
            1,
            Transition::Start { attempt: 1 },
            Timestamp(3),
        );
        commits.push(s.enqueue(b).await.unwrap());
    }
    for c in commits {
        for r in c.await.unwrap() {
            r.unwrap();
        }
    }
    for id in ids {
        assert_eq!(
            s.get_job(id).await.unwrap().unwrap().state,
            JobState::Running {
                worker: w,
                attempt: 1
            }
        );
    }
}

async fn a_final_job_keeps_its_secrets_names_not_their_values<S: Store>(s: S) {
    let mut spec = JobSpec::script("echo $K");
    spec.secrets = vec![hodei_core::Secret {
        name: "K".into(),
        value: "v4lue".into(),
    }];
    let job = Job::new(JobId::new(), spec, Timestamp(1));
    let id = job.id;
    s.insert_job(job).await.unwrap();
    let queued = s.get_job(id).await.unwrap().unwrap();
    assert_eq!(queued.spec.secrets[0].value, "v4lue");
    let j = s
        .transition(
            id,
            queued.state,
            queued.attempt,
            Transition::Cancel,
            Timestamp(2),
        )
        .await
        .unwrap();
    assert!(j.is_terminal());
    let stored = s.get_job(id).await.unwrap().unwrap();
    assert_eq!(stored.spec.secrets[0].name, "K");
    assert!(stored.spec.secrets[0].value.is_empty());
}

async fn credentials_are_kept_by_kind_and_id<S: Store>(s: S) {
    assert!(s.credentials("token").await.unwrap().is_empty());
    assert!(!s.put_credential("token", "b", b"2".to_vec()).await.unwrap());
    assert!(!s.put_credential("token", "a", b"1".to_vec()).await.unwrap());
    // A kind that is a prefix of another does not see the other's records.
    assert!(!s.put_credential("tok", "z", b"x".to_vec()).await.unwrap());
    assert!(
        !s.put_credential("token-x", "c", b"y".to_vec())
            .await
            .unwrap()
    );
    assert!(s.put_credential("token", "b", b"3".to_vec()).await.unwrap());
    assert_eq!(
        s.credentials("token").await.unwrap(),
        vec![("a".into(), b"1".to_vec()), ("b".into(), b"3".to_vec())]
    );
    assert!(s.remove_credential("token", "a").await.unwrap());
    assert!(!s.remove_credential("token", "a").await.unwrap());
    assert_eq!(
        s.credentials("token").await.unwrap(),
        vec![("b".into(), b"3".to_vec())]
    );
    assert_eq!(s.credentials("tok").await.unwrap().len(), 1);
}

/// The server's keyed records live apart from credentials, by kind and
/// id; a batch writes them in the same commit as its jobs.
async fn records_are_kept_apart_by_kind_and_id<S: Store>(s: S) {
    assert!(s.records("pipeline").await.unwrap().is_empty());
    assert_eq!(s.record("pipeline", "a").await.unwrap(), None);
    assert!(!s.put_record("pipeline", "b", b"2".to_vec()).await.unwrap());
    assert!(!s.put_record("pipe", "z", b"x".to_vec()).await.unwrap());
    // The same kind and id as a credential is another record.
    assert!(
        !s.put_credential("pipeline", "b", b"c".to_vec())
            .await
            .unwrap()
    );
    let j = job("acme", None);
    let mut b = Batch::new();
    b.insert_job(j.clone()).unwrap();
    b.put_record("pipeline", "a", Some(b"1".to_vec()));
    b.put_record("pipeline", "b", Some(b"3".to_vec()));
    b.put_record("pipe", "z", None);
    s.enqueue(b).await.unwrap().await.unwrap();
    assert!(s.get_job(j.id).await.unwrap().is_some());
    assert_eq!(
        s.records("pipeline").await.unwrap(),
        vec![("a".into(), b"1".to_vec()), ("b".into(), b"3".to_vec())]
    );
    assert_eq!(
        s.record("pipeline", "b").await.unwrap(),
        Some(b"3".to_vec())
    );
    assert!(s.records("pipe").await.unwrap().is_empty());
    assert_eq!(
        s.credentials("pipeline").await.unwrap(),
        vec![("b".into(), b"c".to_vec())]
    );
    assert!(s.remove_record("pipeline", "a").await.unwrap());
    assert!(!s.remove_record("pipeline", "a").await.unwrap());
    assert_eq!(s.record("pipeline", "a").await.unwrap(), None);
}

/// A filter almost nothing matches, over more jobs than one page may look
/// at: paging still finds every match, in order, and each page ends.
async fn a_sparse_filter_pages_through_every_match<S: Store>(s: S) {
    let mut ids = Vec::new();
    for _ in 0..25 {
        let mut b = Batch::new();
        for _ in 0..1000 {
            let j = job("acme", None);
            ids.push(j.id);
            b.insert_job(j).unwrap();
        }
        s.enqueue(b).await.unwrap().await.unwrap();
    }
    let wanted = [ids[5], ids[12_000], ids[24_990]];
    for id in wanted {
        s.transition(id, JobState::Queued, 1, Transition::Cancel, Timestamp(2))
            .await
            .unwrap();
    }
    let mut found = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = s
            .list_jobs(JobFilter {
                tenant: Some("acme".parse().unwrap()),
                state: Some(StateKind::Cancelled),
                after,
                limit: 10,
            })
            .await
            .unwrap();
        pages += 1;
        assert!(pages <= 10, "paging does not end");
        found.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(found, wanted);
}

fn run<S, F, Fut>(make: impl Fn() -> S, test: F)
where
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(test(make()));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod mem {
            use super::*;
            $(#[test] fn $name() { run(|| MemStore::new(config()), super::$name); })*
        }
        mod redb {
            use super::*;
            $(#[test] fn $name() {
                let dir = tempfile::tempdir().unwrap();
                run(|| RedbStore::open(dir.path().join("hodei.redb"), config()).unwrap(), super::$name);
            })*
        }
        /// On a real PostgreSQL server of the test's own.
        #[cfg(feature = "postgres")]
        mod postgres {
            use super::*;
            $(#[test] fn $name() {
                let cluster = hodei_store::pg::LocalCluster::start().unwrap();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let db = hodei_store::pg::PgDatabase::connect(&cluster.url(), 4).await.unwrap();
                    db.migrate().await.unwrap();
                    super::$name(db.store(config(), None).await.unwrap()).await
                });
            })*
        }
    };
}

conformance!(
    insert_get_and_idempotency,
    compare_and_set_transitions,
    lists_page_and_filter,
    logs_are_idempotent_ordered_and_capped,
    attempts_are_recorded,
    audit_chain_holds,
    recovery_returns_unfinished_jobs,
    concurrent_writers_all_land,
    batches_keep_order_and_their_own_outcomes,
    queued_batches_apply_in_order,
    credentials_are_kept_by_kind_and_id,
    records_are_kept_apart_by_kind_and_id,
    a_final_job_keeps_its_secrets_names_not_their_values,
    a_sparse_filter_pages_through_every_match,
);
