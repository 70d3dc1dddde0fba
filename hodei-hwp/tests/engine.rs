//! The server engine over real stores, with agents as channels: ordering
//! of persistence and sends, reports, cancel, fencing, idempotency,
//! heartbeat loss and restart with recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hodei_core::{
    Event, ExitStatus, JobId, JobSpec, JobState, Resources, Secret, Subscriber, WorkerId,
};
use hodei_hwp::proto::server_message::Msg;
use hodei_hwp::{Engine, EngineConfig, EngineHandle, Registration, proto};
use hodei_store::{MemStore, RedbStore, Store, StoreConfig};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> EngineConfig {
    EngineConfig {
        heartbeat_timeout: Duration::from_millis(600),
        ..EngineConfig::default()
    }
}

struct Agent {
    id: WorkerId,
    rx: mpsc::Receiver<Result<proto::ServerMessage, tonic::Status>>,
    conn: u64,
}

async fn agent<S: Store>(
    h: &EngineHandle<S>,
    id: WorkerId,
    held: Vec<(JobId, u32)>,
) -> (Agent, proto::Welcome) {
    let (tx, rx) = mpsc::channel(64);
    let reg = Registration {
        name: "w".into(),
        worker: id,
        labels: Default::default(),
        capacity: Resources::new(4000, 8192, 0),
        held,
    };
    let (conn, welcome) = h.connect(reg, tx).await.unwrap();
    (Agent { id, rx, conn }, welcome)
}

impl Agent {
    async fn next(&mut self) -> Msg {
        timeout(WAIT, self.rx.recv())
            .await
            .expect("no message from the server")
            .expect("stream closed")
            .expect("stream ended with an error")
            .msg
            .unwrap()
    }

    async fn assignment(&mut self) -> (JobId, u32, proto::JobSpec) {
        loop {
            if let Msg::AssignJob(a) = self.next().await {
                return (a.job_id.parse().unwrap(), a.attempt, a.spec.unwrap());
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
        assert_eq!(welcome.worker_id, a.id.to_string());
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
            if let Msg::CancelJob(c) = a.next().await {
                assert_eq!((c.job_id, c.attempt), (id.to_string(), 1));
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
        assert!(
            welcome.abandoned_jobs.is_empty(),
            "{:?}",
            welcome.abandoned_jobs
        );
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
