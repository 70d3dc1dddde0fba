//! PostgreSQL beyond the shared conformance suite: schema versions, the
//! lease, fencing, a database restart, and moving a redb store over. Each
//! test runs its own PostgreSQL server.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hodei_core::{Job, JobId, JobSpec, JobState, Timestamp, Transition, WorkerId};
use hodei_store::pg::{LocalCluster, PgDatabase, PgStore, copy_redb};
use hodei_store::{
    AttemptRecord, AuditEntry, ChainCheck, JobFilter, LogChunk, LogCursor, LogStream, RedbStore,
    Store, StoreConfig, StoreError,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn job(tenant: &str) -> Job {
    let mut spec = JobSpec::argv(["true"]);
    spec.tenant = tenant.parse().unwrap();
    Job::new(JobId::new(), spec, Timestamp(1))
}

async fn db(cluster: &LocalCluster) -> PgDatabase {
    let db = PgDatabase::connect(&cluster.url(), 4).await.unwrap();
    db.migrate().await.unwrap();
    db
}

#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_alone() {
    let cluster = LocalCluster::start().unwrap();
    rt().block_on(async {
        let db = db(&cluster).await;
        // Migrating twice changes nothing.
        assert_eq!(db.migrate().await.unwrap(), hodei_store::pg::SCHEMA_VERSION);
        let store = db.store(StoreConfig::default(), None).await.unwrap();
        let j = job("acme");
        store.insert_job(j.clone()).await.unwrap();
        drop(store);
        let (client, conn) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .execute("UPDATE hodei_schema SET version = 99", &[])
            .await
            .unwrap();
        for e in [
            db.migrate().await.unwrap_err(),
            db.store(StoreConfig::default(), None).await.unwrap_err(),
            db.check_schema().await.unwrap_err(),
        ] {
            assert!(
                matches!(e, StoreError::UnsupportedSchema { found: 99, .. }),
                "{e}"
            );
            assert!(e.to_string().contains("schema version 99"), "{e}");
        }
        // Nothing was touched.
        let n: i64 = client
            .query_one("SELECT count(*) FROM hodei_jobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
}

#[test]
fn one_lease_holder_at_a_time_and_a_deposed_leader_writes_nothing() {
    let cluster = LocalCluster::start().unwrap();
    rt().block_on(async {
        let db = db(&cluster).await;
        let ttl = Duration::from_millis(600);
        let (a, b) = (db.lease("a", ttl), db.lease("b", ttl));
        let ea = a.try_acquire("ga", "ha").await.unwrap().expect("free lease");
        assert_eq!(b.try_acquire("gb", "hb").await.unwrap(), None);
        assert!(a.renew(ea).await.unwrap());
        let cur = b.current().await.unwrap();
        assert_eq!((cur.epoch, cur.grpc.as_deref(), cur.live), (ea, Some("ga"), true));

        let old: PgStore = db.store(StoreConfig::default(), Some(ea)).await.unwrap();
        let j = job("acme");
        old.insert_job(j.clone()).await.unwrap();

        // `a` stops renewing; `b` takes over once it expires.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let eb = b.try_acquire("gb", "hb").await.unwrap().expect("expired lease");
        assert_eq!(eb, ea + 1);
        assert!(!a.renew(ea).await.unwrap(), "a lost the lease");

        // Every write of the deposed store is refused and changes nothing.
        let refused = old
            .transition(j.id, JobState::Queued, 1, Transition::Cancel, Timestamp(2))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, StoreError::Fenced { epoch, current } if epoch == ea && current == eb),
            "{refused}"
        );
        assert!(old.insert_job(job("acme")).await.is_err());
        assert!(old.append_audit(AuditEntry::default()).await.is_err());
        assert!(matches!(old.failed().await, StoreError::Fenced { .. }));
        let new = db.store(StoreConfig::default(), Some(eb)).await.unwrap();
        assert_eq!(new.get_job(j.id).await.unwrap().unwrap().state, JobState::Queued);
        assert_eq!(new.list_jobs(JobFilter::default()).await.unwrap().jobs.len(), 1);
        assert_eq!(new.audit_records(0, 10).await.unwrap().len(), 0);
        // The new leader writes.
        new.transition(j.id, JobState::Queued, 1, Transition::Cancel, Timestamp(2))
            .await
            .unwrap();
        // Released, the lease is free at once.
        b.release(eb).await.unwrap();
        assert_eq!(a.try_acquire("ga", "ha").await.unwrap(), Some(eb + 1));
    });
}

#[test]
fn writes_fail_while_the_database_is_down_and_resume_after_with_nothing_lost() {
    let cluster = LocalCluster::start().unwrap();
    rt().block_on(async {
        let db = db(&cluster).await;
        let store = db.store(StoreConfig::default(), None).await.unwrap();
        let mut acked = Vec::new();
        for _ in 0..50 {
            let j = job("acme");
            store.insert_job(j.clone()).await.unwrap();
            acked.push(j.id);
        }
        cluster.stop().unwrap();
        let down = store.insert_job(job("acme")).await.unwrap_err();
        assert!(matches!(down, StoreError::Storage(_)), "{down}");
        cluster.restart().unwrap();
        // The writer reconnects for the next batch; reads get new
        // connections from the pool.
        let mut ok = false;
        for _ in 0..50 {
            let j = job("acme");
            if store.insert_job(j.clone()).await.is_ok() {
                acked.push(j.id);
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "writes resume after the restart");
        let mut found = None;
        for _ in 0..50 {
            if let Ok(p) = store
                .list_jobs(JobFilter {
                    limit: 1000,
                    ..JobFilter::default()
                })
                .await
            {
                found = Some(p.jobs.into_iter().map(|j| j.id).collect::<Vec<_>>());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let found = found.expect("reads resume");
        for id in &acked {
            assert!(found.contains(id), "acknowledged job {id} lost");
        }
    });
}

#[test]
fn a_redb_store_moves_over_whole_with_its_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start().unwrap();
    rt().block_on(async {
        let redb = RedbStore::open(dir.path().join("hodei.redb"), StoreConfig::default()).unwrap();
        let mut jobs = Vec::new();
        for i in 0..2500 {
            let mut j = job(if i % 2 == 0 { "acme" } else { "globex" });
            if i % 10 == 0 {
                j.spec.idempotency_key = Some(format!("key-{i}"));
            }
            redb.insert_job(j.clone()).await.unwrap();
            jobs.push(j);
        }
        let first = jobs[0].id;
        redb.transition(first, JobState::Queued, 1, Transition::Cancel, Timestamp(3))
            .await
            .unwrap();
        redb.record_attempt(AttemptRecord {
            job: jobs[1].id,
            attempt: 0,
            worker: WorkerId::new(),
            assigned_at: Timestamp(4),
            started_at: None,
            finished_at: None,
            exit: None,
            peak_memory_mb: None,
        })
        .await
        .unwrap();
        for seq in 0..1200 {
            let chunk = LogChunk {
                stream: if seq % 2 == 0 {
                    LogStream::Stdout
                } else {
                    LogStream::Stderr
                },
                at: Timestamp(seq),
                data: format!("line {seq}\n").into_bytes(),
            };
            redb.append_log(jobs[1].id, 0, seq, chunk).await.unwrap();
        }
        for i in 0..30 {
            redb.append_audit(AuditEntry {
                actor: format!("actor-{i}"),
                action: "submit".into(),
                ..AuditEntry::default()
            })
            .await
            .unwrap();
        }
        redb.put_credential("client-token", "t1", b"hash".to_vec())
            .await
            .unwrap();

        let db = db(&cluster).await;
        let pg = db.store(StoreConfig::default(), None).await.unwrap();
        let copied = copy_redb(&redb, &pg).await.unwrap();
        assert_eq!(copied.jobs, 2500);
        assert_eq!(copied.log_chunks, 1200);
        assert_eq!(copied.audit_records, 30);
        assert_eq!(copied.credentials, 1);
        assert_eq!(copied.attempts, 1);

        assert_eq!(
            pg.verify_audit().await.unwrap(),
            ChainCheck::Intact { records: 30 }
        );
        assert_eq!(
            pg.audit_records(0, 100).await.unwrap(),
            redb.audit_records(0, 100).await.unwrap()
        );
        assert_eq!(pg.recover().await.unwrap(), redb.recover().await.unwrap());
        for tenant in ["acme", "globex"] {
            let f = JobFilter {
                tenant: Some(tenant.parse().unwrap()),
                limit: 1000,
                ..JobFilter::default()
            };
            assert_eq!(
                pg.list_jobs(f.clone()).await.unwrap(),
                redb.list_jobs(f).await.unwrap()
            );
        }
        let cursor = LogCursor { attempt: 0, seq: 0 };
        assert_eq!(
            pg.read_logs(jobs[1].id, cursor, 5000).await.unwrap(),
            redb.read_logs(jobs[1].id, cursor, 5000).await.unwrap()
        );
        assert_eq!(
            pg.attempts(jobs[1].id).await.unwrap(),
            redb.attempts(jobs[1].id).await.unwrap()
        );
        assert_eq!(
            pg.find_idempotent(&"acme".parse().unwrap(), "key-10")
                .await
                .unwrap(),
            redb.find_idempotent(&"acme".parse().unwrap(), "key-10")
                .await
                .unwrap()
        );
        assert_eq!(
            pg.credentials("client-token").await.unwrap(),
            vec![("t1".into(), b"hash".to_vec())]
        );
        // The chain goes on where it was.
        let next = pg.append_audit(AuditEntry::default()).await.unwrap();
        assert_eq!(next.index, 30);
        assert_eq!(
            pg.verify_audit().await.unwrap(),
            ChainCheck::Intact { records: 31 }
        );
    });
}
