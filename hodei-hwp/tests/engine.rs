//! The server engine over real stores, with agents as channels: ordering
//! of persistence and sends, reports, cancel, fencing, idempotency,
//! heartbeat loss and restart with recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hodei_core::{
    Event, ExitStatus, JobId, JobSpec, JobState, Resources, Secret, Subscriber, WorkerId,
};
use hodei_hwp::{Engine, EngineConfig, EngineHandle, Registration, ToAgent, Welcome};
use hodei_store::{MemStore, RedbStore, Store, StoreConfig};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> EngineConfig {
    {
        let mut c = EngineConfig::default();
        c.heartbeat_timeout = Duration::from_millis(600);
        c
    }
}

struct Agent {
    id: WorkerId,
    rx: mpsc::Receiver<ToAgent>,
    conn: u64,
}

async fn agent<S: Store>(
    h: &EngineHandle<S>,
    id: WorkerId,
    held: Vec<(JobId, u32)>,
) -> (Agent, Welcome) {
    let (tx, mut rx) = mpsc::channel(64);
    let reg = Registration {
        name: "w".into(),
        worker: id,
        labels: Default::default(),
        capacity: Resources::new(4000, 8192, 0),
        held,
    };
    let (conn, welcome) = h.connect(reg, Box::new(tx)).await.unwrap();
    // The welcome comes first on the connection too.
    assert_eq!(rx.try_recv().unwrap(), ToAgent::Welcome(welcome.clone()));
    (Agent { id, rx, conn }, welcome)
}

impl Agent {
    async fn next(&mut self) -> ToAgent {
        timeout(WAIT, self.rx.recv())
            .await
            .expect("no message from the server")
            .expect("stream closed")
    }

    async fn assignment(&mut self) -> (JobId, u32, JobSpec) {
        loop {
            if let ToAgent::Assign { job, attempt, spec } = self.next().await {
                return (job, attempt, *spec);
            }
        }
    }
}

async fn wait_state(sub: &mut Subscriber<Event>, job: JobId, want: fn(&JobState) -> bool) {
    timeout(WAIT, async {
        loop {
            if let Ok(e) = sub.recv().await
                && let Event::JobChanged { job: j, to, .. } = &*e
                && *j == job
                && want(to)
            {
                return;
            }
        }
    })
    .await
    .expect("state never reached");
}

fn spec() -> JobSpec {
    let mut s = JobSpec::argv(["echo", "hi"]);
    s.tenant = "acme".parse().unwrap();
    s
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_job_runs_to_success_and_every_step_is_stored() {
    rt().block_on(async {
        let store = Arc::new(MemStore::default());
        let (h, _task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let mut sub = h.bus().subscribe();
        let (mut a, welcome) = agent(&h, WorkerId::new(), vec![]).await;
        assert_eq!(welcome.worker, a.id);
        let mut s = spec();
        s.secrets.push(Secret {
            name: "TOKEN".into(),
            value: "correct-horse".into(),
        });
        let (job, created) = h.submit(s).await.unwrap();
        assert!(created);
        let (id, attempt, wire) = a.assignment().await;
        assert_eq!((id, attempt), (job.id, 1));
        // The assignment left only after it was stored, and it carries the
        // secret value the agent needs.
        let stored = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(
            stored.state,
            JobState::Assigned {
                worker: a.id,
                attempt: 1
            }
        );
        assert_eq!(wire.secrets[0].value, "correct-horse");
        h.started(a.id, id, 1).await.unwrap();
        // Applied: the state and the attempt's record are stored.
        h.finished(a.id, id, 1, ExitStatus::Code(0), false, 12)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        wait_state(&mut sub, id, |s| *s == JobState::Succeeded).await;
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            JobState::Succeeded
        );
        let attempts = store.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].exit, Some(ExitStatus::Code(0)));
        assert_eq!(attempts[0].peak_memory_mb, Some(12));
        assert!(attempts[0].started_at.is_some());
    });
}

#[test]
fn idempotent_submissions_return_the_first_job() {
    rt().block_on(async {
        let store = Arc::new(MemStore::default());
        let (h, _task) = Engine::start(store, config()).await.unwrap();
        let mut s = spec();
        s.idempotency_key = Some("deploy-7".into());
        let (first, created) = h.submit(s.clone()).await.unwrap();
        let (again, created_again) = h.submit(s).await.unwrap();
        assert!(created && !created_again);
        assert_eq!(first.id, again.id);
        let mut orphan = spec();
        orphan.dependencies.push(JobId::new());
        assert!(h.submit(orphan).await.is_err());
    });
}

#[test]
fn cancel_reaches_the_agent_and_late_reports_change_nothing() {
    rt().block_on(async {
        let store = Arc::new(MemStore::default());
        let (h, _task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let mut sub = h.bus().subscribe();
        let (mut a, _) = agent(&h, WorkerId::new(), vec![]).await;
        let (job, _) = h.submit(spec()).await.unwrap();
        let (id, _, _) = a.assignment().await;
        h.started(a.id, id, 1).await.unwrap();
        wait_state(&mut sub, id, |s| matches!(s, JobState::Running { .. })).await;
        h.cancel(job.id).await.unwrap();
        loop {
            if let ToAgent::Cancel { job, attempt, .. } = a.next().await {
                assert_eq!((job, attempt), (id, 1));
                break;
            }
        }
        wait_state(&mut sub, id, |s| *s == JobState::Cancelled).await;
        // The agent's report of the killed process is accepted and ignored.
        h.finished(a.id, id, 1, ExitStatus::Signal(15), false, 0)
            .await
            .unwrap();
        // A report about an attempt that never was is refused (fencing).
        h.started(a.id, id, 7).await.unwrap();
        let (probe, _) = h.submit(spec()).await.unwrap();
        a.assignment().await; // the engine has processed everything before
        assert_ne!(probe.id, id);
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            JobState::Cancelled
        );
    });
}

#[test]
fn a_silent_worker_s_job_is_retried_on_another() {
    rt().block_on(async {
        let store = Arc::new(MemStore::default());
        let (h, _task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let mut sub = h.bus().subscribe();
        let (mut a, _) = agent(&h, WorkerId::new(), vec![]).await;
        let mut s = spec();
        s.retry.max_attempts = 2;
        s.retry.backoff.initial = Duration::from_millis(10);
        s.retry.jitter = 0.0;
        let (job, _) = h.submit(s).await.unwrap();
        let (id, _, _) = a.assignment().await;
        h.started(a.id, id, 1).await.unwrap();
        // A second worker joins and heartbeats; the first falls silent.
        let (mut b, _) = agent(&h, WorkerId::new(), vec![]).await;
        let beats = {
            let cluster = Arc::clone(h.cluster());
            let b_id = b.id;
            tokio::spawn(async move {
                for _ in 0..100 {
                    let now = hodei_core::Clock::now(&hodei_core::SystemClock);
                    let _ = cluster.heartbeat(b_id, Default::default(), now);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        wait_state(&mut sub, id, |s| *s == JobState::Lost).await;
        let (again, attempt, _) = b.assignment().await;
        assert_eq!((again, attempt), (job.id, 2));
        beats.abort();
    });
}

#[test]
fn after_a_restart_running_jobs_reattach_and_queued_ones_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.redb");
    let worker = WorkerId::new();
    let (running, queued) = rt().block_on(async {
        let store = Arc::new(RedbStore::open(&path, StoreConfig::default()).unwrap());
        let (h, task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let mut sub = h.bus().subscribe();
        let (mut a, _) = agent(&h, worker, vec![]).await;
        let (r, _) = h.submit(spec()).await.unwrap();
        a.assignment().await;
        h.started(worker, r.id, 1).await.unwrap();
        wait_state(&mut sub, r.id, |s| matches!(s, JobState::Running { .. })).await;
        // Fill the worker so the next job stays queued.
        let mut big = spec();
        big.resources = Resources::new(4000, 8192, 0);
        let (q, _) = h.submit(big).await.unwrap();
        drop((h, a, sub));
        timeout(WAIT, task).await.unwrap().unwrap();
        (r.id, q.id)
    });
    rt().block_on(async {
        let store = Arc::new(RedbStore::open(&path, StoreConfig::default()).unwrap());
        let (h, _task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let mut sub = h.bus().subscribe();
        // The agent comes back still running its job.
        let (mut a, welcome) = agent(&h, worker, vec![(running, 1)]).await;
        assert!(welcome.abandoned.is_empty(), "{:?}", welcome.abandoned);
        h.finished(worker, running, 1, ExitStatus::Code(0), false, 1)
            .await
            .unwrap();
        wait_state(&mut sub, running, |s| *s == JobState::Succeeded).await;
        // Its capacity freed: the queued job runs now.
        let (id, attempt, _) = a.assignment().await;
        assert_eq!((id, attempt), (queued, 1));
        let _ = a.conn;
    });
}

#[test]
fn a_job_that_finds_room_is_stored_assigned_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store =
            Arc::new(RedbStore::open(dir.path().join("h.redb"), StoreConfig::default()).unwrap());
        let (h, _task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let mut sub = h.bus().subscribe();
        let (mut a, _) = agent(&h, WorkerId::new(), vec![]).await;
        for _ in 0..5 {
            let before = store.write_stats().commits();
            let (job, created) = h.submit(spec()).await.unwrap();
            assert!(created);
            // The answer comes once the job is stored, already placed.
            assert_eq!(
                job.state,
                JobState::Assigned {
                    worker: a.id,
                    attempt: 1
                }
            );
            assert_eq!(
                store.write_stats().commits() - before,
                1,
                "one commit per placed submission"
            );
            let (id, attempt, _) = a.assignment().await;
            assert_eq!((id, attempt), (job.id, 1));
            let rec = store.attempts(id).await.unwrap();
            assert_eq!((rec.len(), rec[0].worker), (1, a.id));
        }
        // Published once each, after they were stored, in order.
        let mut seen = Vec::new();
        while let Ok(Ok(e)) = timeout(Duration::from_millis(200), sub.recv()).await {
            match &*e {
                Event::JobSubmitted { job, .. } => seen.push((*job, "submitted")),
                Event::JobChanged { job, to, .. } => seen.push((*job, to.name())),
                _ => {}
            }
        }
        assert_eq!(seen.len(), 10, "{seen:?}");
        for pair in seen.chunks(2) {
            assert_eq!(pair[0].0, pair[1].0);
            assert_eq!((pair[0].1, pair[1].1), ("submitted", "assigned"));
        }
    });
}

#[test]
fn repeated_keys_in_flight_make_one_job() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(RedbStore::open(dir.path().join("h.redb"), StoreConfig::default()).unwrap());
        let (h, _task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let (_a, _) = agent(&h, WorkerId::new(), vec![]).await;
        for round in 0..5 {
            let mut s = spec();
            s.idempotency_key = Some(format!("key-{round}"));
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (h, s) = (h.clone(), s.clone());
                    tokio::spawn(async move { h.submit(s).await.unwrap() })
                })
                .collect();
            let mut ids = std::collections::HashSet::new();
            let mut created = 0;
            for t in tasks {
                let (job, new) = t.await.unwrap();
                ids.insert(job.id);
                created += usize::from(new);
            }
            assert_eq!((ids.len(), created), (1, 1));
        }
        let all = store
            .list_jobs(hodei_store::JobFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.jobs.len(), 5);
    });
}

/// A store whose batches can be made to fail, as a full disk would.
#[derive(Clone, Default)]
struct Failing {
    inner: MemStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for Failing {
    async fn enqueue(
        &self,
        batch: hodei_store::Batch,
    ) -> Result<hodei_store::Commit, hodei_store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(hodei_store::StoreError::storage(
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        self.inner.enqueue(batch).await
    }
    async fn find_idempotent(
        &self,
        t: &hodei_core::TenantId,
        k: &str,
    ) -> Result<Option<hodei_core::Job>, hodei_store::StoreError> {
        self.inner.find_idempotent(t, k).await
    }
    async fn insert_job(
        &self,
        job: hodei_core::Job,
    ) -> Result<hodei_store::Inserted, hodei_store::StoreError> {
        self.inner.insert_job(job).await
    }
    async fn get_job(&self, id: JobId) -> Result<Option<hodei_core::Job>, hodei_store::StoreError> {
        self.inner.get_job(id).await
    }
    async fn list_jobs(
        &self,
        f: hodei_store::JobFilter,
    ) -> Result<hodei_store::Page, hodei_store::StoreError> {
        self.inner.list_jobs(f).await
    }
    async fn transition(
        &self,
        id: JobId,
        e: JobState,
        a: u32,
        t: hodei_core::Transition,
        now: hodei_core::Timestamp,
    ) -> Result<hodei_core::Job, hodei_store::StoreError> {
        self.inner.transition(id, e, a, t, now).await
    }
    async fn record_attempt(
        &self,
        r: hodei_store::AttemptRecord,
    ) -> Result<(), hodei_store::StoreError> {
        self.inner.record_attempt(r).await
    }
    async fn attempts(
        &self,
        job: JobId,
    ) -> Result<Vec<hodei_store::AttemptRecord>, hodei_store::StoreError> {
        self.inner.attempts(job).await
    }
    async fn append_log(
        &self,
        job: JobId,
        attempt: u32,
        seq: u64,
        c: hodei_store::LogChunk,
    ) -> Result<hodei_store::LogAppend, hodei_store::StoreError> {
        self.inner.append_log(job, attempt, seq, c).await
    }
    async fn read_logs(
        &self,
        job: JobId,
        from: hodei_store::LogCursor,
        limit: usize,
    ) -> Result<hodei_store::LogPage, hodei_store::StoreError> {
        self.inner.read_logs(job, from, limit).await
    }
    async fn append_audit(
        &self,
        e: hodei_store::AuditEntry,
    ) -> Result<hodei_store::AuditRecord, hodei_store::StoreError> {
        self.inner.append_audit(e).await
    }
    async fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<hodei_store::AuditRecord>, hodei_store::StoreError> {
        self.inner.audit_records(from, limit).await
    }
    async fn verify_audit(&self) -> Result<hodei_store::ChainCheck, hodei_store::StoreError> {
        self.inner.verify_audit().await
    }
    async fn recover(&self) -> Result<Vec<hodei_core::Job>, hodei_store::StoreError> {
        self.inner.recover().await
    }
    async fn put_credential(
        &self,
        kind: &str,
        id: &str,
        value: Vec<u8>,
    ) -> Result<bool, hodei_store::StoreError> {
        self.inner.put_credential(kind, id, value).await
    }
    async fn remove_credential(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<bool, hodei_store::StoreError> {
        self.inner.remove_credential(kind, id).await
    }
    async fn credentials(
        &self,
        kind: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, hodei_store::StoreError> {
        self.inner.credentials(kind).await
    }
    async fn put_record(
        &self,
        kind: &str,
        id: &str,
        value: Vec<u8>,
    ) -> Result<bool, hodei_store::StoreError> {
        self.inner.put_record(kind, id, value).await
    }
    async fn remove_record(&self, kind: &str, id: &str) -> Result<bool, hodei_store::StoreError> {
        self.inner.remove_record(kind, id).await
    }
    async fn record(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, hodei_store::StoreError> {
        self.inner.record(kind, id).await
    }
    async fn records(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, hodei_store::StoreError> {
        self.inner.records(kind).await
    }
}

#[test]
fn a_submission_that_cannot_be_stored_fails_and_leaves_nothing_behind() {
    rt().block_on(async {
        let store = Arc::new(Failing::default());
        let (h, _task) = Engine::start(Arc::clone(&store), config()).await.unwrap();
        let (mut a, _) = agent(&h, WorkerId::new(), vec![]).await;
        let mut sub = h.bus().subscribe();
        // Each job takes the whole worker.
        let mut whole = spec();
        whole.resources = Resources::new(4000, 8192, 0);
        whole.idempotency_key = Some("k".into());
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = h.submit(whole.clone()).await.unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("no space left"),
            "{err}"
        );
        // The disk's own error is kept as the source.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut io = None;
        while let Some(c) = cause {
            if let Some(e) = c.downcast_ref::<std::io::Error>() {
                io = e.raw_os_error();
            }
            cause = c.source();
        }
        assert_eq!(io, Some(libc::ENOSPC), "{err:?}");
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        // Nothing was stored, sent or published, and the room it held is
        // free: the same submission goes through and is placed.
        assert!(a.rx.try_recv().is_err());
        assert!(store.inner.recover().await.unwrap().is_empty());
        let (job, created) = h.submit(whole).await.unwrap();
        assert!(created);
        assert_eq!(a.assignment().await.0, job.id);
        let first = timeout(WAIT, sub.recv()).await.unwrap().unwrap();
        assert!(
            matches!(&*first, Event::JobSubmitted { job: j, .. } if *j == job.id),
            "{first:?}"
        );
        let snap = h.snapshot().await.unwrap();
        assert_eq!(snap.stats.tracked, 1);
    });
}
