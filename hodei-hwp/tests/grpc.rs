//! The services over real gRPC on 127.0.0.1 (OS-chosen ports): a test
//! agent speaks WorkerService, clients speak JobService.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hodei_core::{JobId, JobSpec, Secret, WorkerId};
use hodei_hwp::client::{Client, connect_agent};
use hodei_hwp::proto::{self, agent_message::Msg as In, server_message::Msg as Out};
use hodei_hwp::server::grpc::limits::LimitConfig;
use hodei_hwp::server::security::Security;
use hodei_hwp::tls::ClientTls;
use hodei_hwp::{AGENT_CERT_TTL, Engine, EngineConfig, Principal, Tokens, serve};
use hodei_store::{RedbStore, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);
const JOIN: &str = "join-token-for-tests";
const ADMIN: &str = "admin-token-for-tests";
const ACME: &str = "acme-token-for-tests";
const GLOBEX: &str = "globex-token-for-tests";

struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        timeout(WAIT, self.task).await.unwrap().unwrap();
    }
}

async fn start(path: &std::path::Path) -> Server {
    start_with(path, {
        let mut c = EngineConfig::default();
        c.heartbeat_timeout = Duration::from_millis(800);
        c.heartbeat_interval = Duration::from_millis(100);
        c
    })
    .await
}

async fn start_with(path: &std::path::Path, config: EngineConfig) -> Server {
    let store = Arc::new(RedbStore::open(path, StoreConfig::default()).unwrap());
    let (engine, engine_task) = Engine::start(Arc::clone(&store), config.clone())
        .await
        .unwrap();
    let mut tokens = Tokens::new();
    tokens.add_join_token(JOIN);
    tokens.add_client_token(ADMIN, Principal::admin());
    tokens.add_client_token(ACME, Principal::tenant("acme".parse().unwrap()));
    tokens.add_client_token(GLOBEX, Principal::tenant("globex".parse().unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel();
    // Plaintext: these tests are of the protocol; TLS is tested in
    // examples/tests/tls.rs.
    let security = Security::load(store, None, AGENT_CERT_TTL, &tokens, None, None)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        serve(
            listener,
            engine,
            security,
            LimitConfig::new(0.0, 0),
            &config,
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        // The engine ends once the server has dropped its handles.
        let _ = engine_task.await;
    });
    Server {
        url,
        stop: Some(stop),
        task,
    }
}

struct Agent {
    id: WorkerId,
    tx: mpsc::Sender<proto::AgentMessage>,
    rx: tonic::Streaming<proto::ServerMessage>,
}

async fn agent(
    url: &str,
    id: Option<WorkerId>,
    held: Vec<(JobId, u32)>,
) -> (Agent, proto::Welcome) {
    let mut c = connect_agent(url, &ClientTls::Plaintext, Some(JOIN))
        .await
        .unwrap();
    let (tx, out) = mpsc::channel(64);
    tx.send(register(id, held)).await.unwrap();
    let mut rx = c
        .connect(tokio_stream::wrappers::ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
    let first = timeout(WAIT, rx.message()).await.unwrap().unwrap().unwrap();
    let Some(Out::Welcome(w)) = first.msg else {
        panic!("expected Welcome first, got {first:?}");
    };
    let id = w.worker_id.parse().unwrap();
    (Agent { id, tx, rx }, w)
}

fn register(id: Option<WorkerId>, held: Vec<(JobId, u32)>) -> proto::AgentMessage {
    proto::AgentMessage {
        msg: Some(In::Register(proto::Register {
            agent_version: "test".into(),
            worker_id: id.map(|i| i.to_string()).unwrap_or_default(),
            name: "test-agent".into(),
            labels: Default::default(),
            capacity: Some(proto::Resources {
                cpu_millis: 4000,
                memory_mb: 8192,
                gpus: 0,
            }),
            jobs: held
                .into_iter()
                .map(|(j, a)| proto::HeldJob {
                    job_id: j.to_string(),
                    attempt: a,
                    finished: false,
                })
                .collect(),
        })),
    }
}

impl Agent {
    async fn send(&self, m: In) {
        self.tx
            .send(proto::AgentMessage { msg: Some(m) })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Result<Out, tonic::Status> {
        match timeout(WAIT, self.rx.message()).await.expect("no message") {
            Ok(Some(m)) => Ok(m.msg.unwrap()),
            Ok(None) => Err(tonic::Status::cancelled("stream ended")),
            Err(s) => Err(s),
        }
    }

    async fn assignment(&mut self) -> proto::AssignJob {
        loop {
            if let Out::AssignJob(a) = self.next().await.unwrap() {
                return a;
            }
        }
    }

    async fn start(&self, job: &str, attempt: u32) {
        self.send(In::JobStarted(proto::JobStarted {
            job_id: job.into(),
            attempt,
            started_at_ms: 0,
        }))
        .await;
    }

    async fn finish(&self, job: &str, attempt: u32, code: i32, timed_out: bool) {
        self.send(In::JobFinished(proto::JobFinished {
            job_id: job.into(),
            attempt,
            exit: Some(proto::ExitStatus {
                kind: Some(proto::exit_status::Kind::Code(code)),
            }),
            duration_ms: 5,
            peak_memory_mb: 3,
            timed_out,
            log_batches: 1,
            outputs: Default::default(),
        }))
        .await;
    }

    async fn log(&self, job: &str, attempt: u32, seq: u64, data: &[u8]) {
        self.send(In::LogBatch(proto::LogBatch {
            job_id: job.into(),
            attempt,
            seq,
            stream: proto::LogStream::Stdout as i32,
            at_ms: 1,
            data: data.to_vec(),
        }))
        .await;
    }
}

async fn wait_for(c: &mut Client, job: JobId, kind: proto::JobStateKind) -> proto::Job {
    let mut events = c.watch(Some(job), true).await.unwrap();
    timeout(WAIT, async {
        loop {
            let e = events.message().await.unwrap().unwrap();
            if e.to.as_ref().unwrap().kind == kind as i32 {
                return;
            }
        }
    })
    .await
    .expect("state not reached");
    c.get(job).await.unwrap()
}

fn spec(tenant: &str) -> JobSpec {
    let mut s = JobSpec::argv(["echo", "hello"]);
    s.tenant = tenant.parse().unwrap();
    s
}

/// `s` with a second attempt after 10 ms.
fn retried_once(mut s: JobSpec) -> JobSpec {
    s.retry.max_attempts = 2;
    s.retry.backoff.initial = Duration::from_millis(10);
    s.retry.jitter = 0.0;
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
fn a_job_is_assigned_logs_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut c = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let mut s = spec("acme");
        s.secrets.push(Secret {
            name: "TOKEN".into(),
            value: "correct-horse".into(),
        });
        let (job, created) = c.submit(&s).await.unwrap();
        assert!(created);
        assert_eq!(
            job.spec.as_ref().unwrap().secrets[0].value,
            "",
            "no secret in responses"
        );
        let assign = a.assignment().await;
        assert_eq!(assign.job_id, job.id);
        assert_eq!(assign.spec.unwrap().secrets[0].value, "correct-horse");
        a.start(&job.id, 1).await;
        a.log(&job.id, 1, 0, b"hello\n").await;
        a.log(&job.id, 1, 1, b"world\n").await;
        a.log(&job.id, 1, 1, b"world\n").await; // a resend is harmless
        let mut acked = Vec::new();
        while acked.len() < 3 {
            if let Out::LogAck(ack) = a.next().await.unwrap() {
                acked.push(ack.seq);
            }
        }
        assert_eq!(acked, vec![0, 1, 1]);
        let id: JobId = job.id.parse().unwrap();
        // Follow the log while the job finishes.
        let mut follow = c.logs(id, true).await.unwrap();
        a.finish(&job.id, 1, 0, false).await;
        let mut text = Vec::new();
        while let Some(chunk) = timeout(WAIT, follow.message()).await.unwrap().unwrap() {
            text.extend(chunk.data);
        }
        assert_eq!(text, b"hello\nworld\n");
        let done = wait_for(&mut c, id, proto::JobStateKind::Succeeded).await;
        assert_eq!(done.attempt, 1);
        server.shutdown().await;
    });
}

#[test]
fn cancel_and_timeout_end_jobs_with_the_right_state() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut c = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let (job, _) = c.submit(&spec("acme")).await.unwrap();
        let id: JobId = job.id.parse().unwrap();
        a.assignment().await;
        a.start(&job.id, 1).await;
        wait_for(&mut c, id, proto::JobStateKind::Running).await;
        let cancelled = c.cancel(id).await.unwrap();
        assert_eq!(
            cancelled.state.unwrap().kind,
            proto::JobStateKind::Cancelled as i32
        );
        loop {
            if let Out::CancelJob(k) = a.next().await.unwrap() {
                assert_eq!(k.job_id, job.id);
                assert!(k.grace_ms > 0);
                break;
            }
        }
        a.finish(&job.id, 1, 143, false).await;
        let again = c.cancel(id).await.unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition);

        let (job2, _) = c.submit(&spec("acme")).await.unwrap();
        a.assignment().await;
        a.start(&job2.id, 1).await;
        a.finish(&job2.id, 1, -1, true).await;
        wait_for(
            &mut c,
            job2.id.parse().unwrap(),
            proto::JobStateKind::TimedOut,
        )
        .await;
        server.shutdown().await;
    });
}

#[test]
fn a_silent_agent_s_job_is_retried_elsewhere_and_stale_reports_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut c = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let s = retried_once(spec("acme"));
        let (job, _) = c.submit(&s).await.unwrap();
        let id: JobId = job.id.parse().unwrap();
        a.assignment().await;
        a.start(&job.id, 1).await;
        wait_for(&mut c, id, proto::JobStateKind::Running).await;
        // A second agent heartbeats; the first says nothing more.
        let (mut b, _) = agent(&server.url, None, vec![]).await;
        let beating = {
            let tx = b.tx.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    let hb = proto::AgentMessage {
                        msg: Some(In::Heartbeat(proto::Heartbeat::default())),
                    };
                    if tx.send(hb).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let retry = b.assignment().await;
        assert_eq!((retry.job_id.as_str(), retry.attempt), (job.id.as_str(), 2));
        // Worker a's late log for attempt 1 is still its own attempt's; a
        // log for attempt 2 from a is refused and its stream closed.
        a.log(&job.id, 2, 0, b"not mine").await;
        let err = loop {
            match a.next().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        beating.abort();
        server.shutdown().await;
    });
}

#[test]
fn jobs_survive_a_server_restart_and_agents_reattach() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.redb");
    let (running, queued) = rt().block_on(async {
        let server = start(&path).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut c = Client::connect(&server.url, &ClientTls::Plaintext, ADMIN)
            .await
            .unwrap();
        let (r, _) = c.submit(&spec("acme")).await.unwrap();
        a.assignment().await;
        a.start(&r.id, 1).await;
        wait_for(&mut c, r.id.parse().unwrap(), proto::JobStateKind::Running).await;
        let mut big = spec("acme");
        big.resources = hodei_core::Resources::new(4000, 8192, 0);
        let (q, _) = c.submit(&big).await.unwrap();
        drop(a);
        server.shutdown().await;
        (r.id, q.id)
    });
    rt().block_on(async {
        let server = start(&path).await;
        let mut c = Client::connect(&server.url, &ClientTls::Plaintext, ADMIN)
            .await
            .unwrap();
        let r = c.get(running.parse().unwrap()).await.unwrap();
        let worker: WorkerId = r.state.unwrap().worker_id.parse().unwrap();
        let (mut a, welcome) = agent(
            &server.url,
            Some(worker),
            vec![(running.parse().unwrap(), 1)],
        )
        .await;
        assert!(welcome.abandoned_jobs.is_empty());
        assert_eq!(a.id, worker);
        a.finish(&running, 1, 0, false).await;
        let next = a.assignment().await;
        assert_eq!(next.job_id, queued);
        server.shutdown().await;
    });
}

#[test]
fn submissions_are_idempotent_and_tenants_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let mut globex = Client::connect(&server.url, &ClientTls::Plaintext, GLOBEX)
            .await
            .unwrap();
        let mut s = spec("acme");
        s.idempotency_key = Some("release-1".into());
        let (first, created) = acme.submit(&s).await.unwrap();
        let (second, created_again) = acme.submit(&s).await.unwrap();
        assert!(created && !created_again);
        assert_eq!(first.id, second.id);
        let id: JobId = first.id.parse().unwrap();
        // Another tenant can neither see nor cancel it.
        assert_eq!(globex.get(id).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(globex.cancel(id).await.unwrap_err().code(), Code::NotFound);
        let listed = globex.list(proto::ListRequest::default()).await.unwrap();
        assert!(listed.jobs.is_empty());
        let mine = acme.list(proto::ListRequest::default()).await.unwrap();
        assert_eq!(mine.jobs.len(), 1);
        // Nor submit in its name.
        let err = globex.submit(&spec("acme")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let other = globex
            .list(proto::ListRequest {
                tenant: "acme".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::PermissionDenied);
        server.shutdown().await;
    });
}

#[test]
fn unauthenticated_and_malformed_requests_get_clear_statuses() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let mut stranger = Client::connect(&server.url, &ClientTls::Plaintext, "not-a-token")
            .await
            .unwrap();
        let err = stranger.submit(&spec("acme")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // An agent with a client token is refused.
        let mut c = connect_agent(&server.url, &ClientTls::Plaintext, Some(ACME))
            .await
            .unwrap();
        let (tx, out) = mpsc::channel(4);
        tx.send(register(None, vec![])).await.unwrap();
        let err = c
            .connect(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // An agent whose first message is not Register is refused.
        let mut c = connect_agent(&server.url, &ClientTls::Plaintext, Some(JOIN))
            .await
            .unwrap();
        let (tx, out) = mpsc::channel(4);
        tx.send(proto::AgentMessage {
            msg: Some(In::Heartbeat(proto::Heartbeat::default())),
        })
        .await
        .unwrap();
        let err = c
            .connect(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("register"), "{err}");
        // A spec with no command and a bad tenant names both fields.
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ADMIN)
            .await
            .unwrap();
        let err = acme
            .raw()
            .submit(proto::SubmitRequest {
                spec: Some(proto::JobSpec {
                    tenant: "Not Valid".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("spec.command") && err.message().contains("spec.tenant"),
            "{err}"
        );
        let err = acme
            .raw()
            .get(proto::GetRequest {
                job_id: "xyz".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("job_id"));
        server.shutdown().await;
    });
}

#[test]
fn a_watch_resumes_from_a_given_point() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut c = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let mut live = c.watch(None, false).await.unwrap();
        let (job, _) = c.submit(&spec("acme")).await.unwrap();
        a.assignment().await;
        a.start(&job.id, 1).await;
        a.finish(&job.id, 1, 0, false).await;
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let e = timeout(WAIT, live.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push((e.seq, e.to.unwrap().kind));
        }
        let kinds: Vec<i32> = seen.iter().map(|s| s.1).collect();
        use proto::JobStateKind as K;
        assert_eq!(
            kinds,
            vec![K::Assigned as i32, K::Running as i32, K::Succeeded as i32]
        );
        // A client that saw only the first event resumes after it.
        let mut resumed = c
            .raw()
            .watch(proto::WatchRequest {
                job_id: job.id.clone(),
                include_current: false,
                from_seq: Some(seen[0].0 + 1),
            })
            .await
            .unwrap()
            .into_inner();
        for want in &seen[1..] {
            let e = timeout(WAIT, resumed.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!((e.seq, e.to.unwrap().kind), *want);
        }
        server.shutdown().await;
    });
}

#[test]
fn workers_are_listed_and_only_admins_drain_them() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut admin = Client::connect(&server.url, &ClientTls::Plaintext, ADMIN)
            .await
            .unwrap();
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let workers = acme.workers().await.unwrap();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].id, a.id.to_string());
        assert_eq!(workers[0].status, "ready");
        assert_eq!(
            acme.drain(a.id).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        let drained = admin.drain(a.id).await.unwrap();
        assert_eq!(drained.status, "draining");
        loop {
            if let Out::Drain(_) = a.next().await.unwrap() {
                break;
            }
        }
        assert_eq!(
            admin.drain(WorkerId::new()).await.unwrap_err().code(),
            Code::NotFound
        );
        server.shutdown().await;
    });
}

#[test]
fn health_and_reflection_answer_any_grpc_client() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "hodei.hwp.v1.JobService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut reflection = ServerReflectionClient::new(channel);
        let ask = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream::iter([ask]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer {answer:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "hodei.hwp.v1.JobService",
            "hodei.hwp.v1.WorkerService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        server.shutdown().await;
    });
}

/// The same question about a job of another tenant and about an id that
/// does not exist gets the same answer, in every call that names a job.
#[test]
fn tenants_see_and_name_only_their_own_jobs() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut admin = Client::connect(&server.url, &ClientTls::Plaintext, ADMIN)
            .await
            .unwrap();
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let mut globex = Client::connect(&server.url, &ClientTls::Plaintext, GLOBEX)
            .await
            .unwrap();
        let (job, _) = acme.submit(&spec("acme")).await.unwrap();
        let id: JobId = job.id.parse().unwrap();
        let assigned = a.assignment().await;
        assert_eq!(assigned.job_id, job.id);

        // Workers: each tenant sees only its own jobs on them; the name
        // the agent registered with is shown.
        let jobs_seen = |w: &[proto::Worker]| w[0].jobs.clone();
        let seen_by_globex = globex.workers().await.unwrap();
        assert_eq!(seen_by_globex[0].name, "test-agent");
        assert!(jobs_seen(&seen_by_globex).is_empty(), "{seen_by_globex:?}");
        assert_eq!(
            jobs_seen(&acme.workers().await.unwrap()),
            vec![job.id.clone()]
        );
        assert_eq!(
            jobs_seen(&admin.workers().await.unwrap()),
            vec![job.id.clone()]
        );

        // Naming another tenant's job is answered as naming no job.
        let unknown = JobId::new();
        let same = |e1: tonic::Status, e2: tonic::Status| {
            assert_eq!(e1.code(), e2.code(), "{e1:?} / {e2:?}");
            assert_eq!(
                e1.message().replace(&id.to_string(), "ID"),
                e2.message().replace(&unknown.to_string(), "ID")
            );
        };
        let dep_on = |target: JobId| {
            let mut s = spec("globex");
            s.dependencies = vec![target];
            s
        };
        let e1 = globex.submit(&dep_on(id)).await.unwrap_err();
        let e2 = globex.submit(&dep_on(unknown)).await.unwrap_err();
        assert_eq!(e1.code(), Code::InvalidArgument);
        same(e1, e2);
        same(
            globex.get(id).await.unwrap_err(),
            globex.get(unknown).await.unwrap_err(),
        );
        same(
            globex.cancel(id).await.unwrap_err(),
            globex.cancel(unknown).await.unwrap_err(),
        );
        same(
            globex.watch(Some(id), true).await.unwrap_err(),
            globex.watch(Some(unknown), true).await.unwrap_err(),
        );
        same(
            globex.logs(id, false).await.unwrap_err(),
            globex.logs(unknown, false).await.unwrap_err(),
        );
        // Its own tenant may depend on it.
        let mut mine = spec("acme");
        mine.dependencies = vec![id];
        acme.submit(&mine).await.unwrap();
        server.shutdown().await;
    });
}

/// Error messages stay far below what gRPC clients accept in metadata,
/// and a request over the size limit is RESOURCE_EXHAUSTED naming it.
#[test]
fn errors_are_bounded_and_an_oversized_request_names_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let mut s = spec("acme");
        for i in 0..10_000 {
            s.env
                .insert(format!("{i} bad name {}", "=".repeat(40)), "v".into());
        }
        let err = acme.submit(&s).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().len() < 8 * 1024, "{}", err.message().len());
        assert!(err.message().contains(" more"), "{}", err.message());
        assert!(err.message().contains("env"), "{}", err.message());

        let mut big = spec("acme");
        big.env.insert("BIG".into(), "x".repeat(5 * 1024 * 1024));
        let err = acme.submit(&big).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("4194304"), "{}", err.message());
        // The connection is still good.
        acme.submit(&spec("acme")).await.unwrap();
        server.shutdown().await;
    });
}

/// Watching one job ends with OK once the job is final, including a job
/// already final when the watch begins; a failure with a retry left is not
/// final.
#[test]
fn a_watch_of_one_job_ends_once_it_is_final() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let (mut a, _) = agent(&server.url, None, vec![]).await;
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let s = retried_once(spec("acme"));
        let (job, _) = acme.submit(&s).await.unwrap();
        let id: JobId = job.id.parse().unwrap();
        let mut events = acme.watch(Some(id), true).await.unwrap();
        for (attempt, code) in [(1, 1), (2, 0)] {
            let got = a.assignment().await;
            assert_eq!(got.attempt, attempt);
            a.start(&job.id, attempt).await;
            a.finish(&job.id, attempt, code, false).await;
        }
        let seen = timeout(WAIT, async {
            let mut kinds = Vec::new();
            while let Some(e) = events.message().await.unwrap() {
                kinds.push(e.to.unwrap().kind);
            }
            kinds
        })
        .await
        .expect("the watch did not end");
        assert_eq!(
            seen.last(),
            Some(&(proto::JobStateKind::Succeeded as i32)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&(proto::JobStateKind::Failed as i32)),
            "{seen:?}"
        );
        // Already final: the current state, then the end.
        let mut again = acme.watch(Some(id), true).await.unwrap();
        let first = timeout(WAIT, again.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            first.to.unwrap().kind,
            proto::JobStateKind::Succeeded as i32
        );
        assert!(
            timeout(WAIT, again.message())
                .await
                .unwrap()
                .unwrap()
                .is_none()
        );
        server.shutdown().await;
    });
}

/// On shutdown, gRPC health says NOT_SERVING while the listener still
/// accepts, before it closes.
#[test]
fn shutdown_reports_not_serving_before_the_listener_closes() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start_with(&dir.path().join("h.redb"), {
            let mut c = EngineConfig::default();
            c.shutdown_delay = Duration::from_secs(2);
            c
        })
        .await;
        let url = server.url.clone();
        let check = |service: &'static str| {
            let url = url.clone();
            async move {
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let r = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<i32, String>(r.into_inner().status)
            }
        };
        use tonic_health::pb::health_check_response::ServingStatus;
        assert_eq!(check("").await.unwrap(), ServingStatus::Serving as i32);
        let Server { stop, task, .. } = server;
        stop.unwrap().send(()).unwrap();
        let mut saw = false;
        for _ in 0..100 {
            // A fresh connection each time: the listener is still open.
            if check("hodei.hwp.v1.JobService").await.unwrap() == ServingStatus::NotServing as i32 {
                assert_eq!(check("").await.unwrap(), ServingStatus::NotServing as i32);
                saw = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(saw, "never reported NOT_SERVING while accepting");
        timeout(WAIT, task).await.unwrap().unwrap();
        assert!(check("").await.is_err(), "still accepting after shutdown");
    });
}

/// Every connection the server accepts has TCP_NODELAY: small messages
/// (AssignJob, a Submit reply) must not wait on delayed acknowledgements.
#[test]
fn accepted_connections_have_tcp_nodelay() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
        let (_a, _) = agent(&server.url, None, vec![]).await;
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        acme.list(proto::ListRequest::default()).await.unwrap();
        // This process holds both ends: find the server's side of each
        // connection (local port = the server's, not the listener).
        let mut accepted = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Some(nodelay) = server_side_nodelay(fd, port) {
                accepted.push(nodelay);
            }
        }
        assert!(
            accepted.len() >= 2,
            "found {} accepted sockets",
            accepted.len()
        );
        assert!(accepted.iter().all(|n| *n), "{accepted:?}");
        server.shutdown().await;
    });
}

/// For a connected TCP socket whose local port is `port`: is TCP_NODELAY
/// on? `None` for anything else (other sockets, the listener, files).
fn server_side_nodelay(fd: i32, port: u16) -> Option<bool> {
    // SAFETY: getsockname, getsockopt on a descriptor number with valid
    // out pointers; a descriptor that is not a socket fails with ENOTSOCK.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, (&raw mut addr).cast(), &mut len) != 0 {
            return None;
        }
        if i32::from(addr.ss_family) != libc::AF_INET {
            return None;
        }
        let sin: libc::sockaddr_in = std::ptr::read((&raw const addr).cast());
        if u16::from_be(sin.sin_port) != port {
            return None;
        }
        let get = |level, name| {
            let mut v: libc::c_int = 0;
            let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            (libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut l) == 0).then_some(v)
        };
        if get(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0 {
            return None;
        }
        Some(get(libc::IPPROTO_TCP, libc::TCP_NODELAY)? != 0)
    }
}

/// A worker's labels follow the same rule as the constraints that select
/// them: one a job could never name is refused at registration.
#[test]
fn a_worker_label_no_job_could_select_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = start(&dir.path().join("h.redb")).await;
        for (key, value) in [("bad key", "v"), ("-leading", "v"), ("zone", "a\u{7}b")] {
            let mut c = connect_agent(&server.url, &ClientTls::Plaintext, Some(JOIN))
                .await
                .unwrap();
            let (tx, out) = mpsc::channel(4);
            let mut reg = register(None, vec![]);
            if let Some(In::Register(r)) = reg.msg.as_mut() {
                r.labels.insert(key.into(), value.into());
            }
            tx.send(reg).await.unwrap();
            let err = match c
                .connect(tokio_stream::wrappers::ReceiverStream::new(out))
                .await
            {
                Err(e) => e,
                Ok(resp) => {
                    let mut rx = resp.into_inner();
                    timeout(WAIT, rx.message()).await.unwrap().unwrap_err()
                }
            };
            assert_eq!(err.code(), Code::InvalidArgument, "{key}: {err:?}");
            assert!(
                err.message().contains("register.labels."),
                "{}",
                err.message()
            );
        }
        // A label a constraint can name is accepted, and selects the worker.
        let mut c = connect_agent(&server.url, &ClientTls::Plaintext, Some(JOIN))
            .await
            .unwrap();
        let (tx, out) = mpsc::channel(4);
        let mut reg = register(None, vec![]);
        if let Some(In::Register(r)) = reg.msg.as_mut() {
            r.labels.insert("disk.kind/ssd".into(), "yes".into());
        }
        tx.send(reg).await.unwrap();
        let mut rx = c
            .connect(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        let first = timeout(WAIT, rx.message()).await.unwrap().unwrap().unwrap();
        assert!(matches!(first.msg, Some(Out::Welcome(_))));
        let mut acme = Client::connect(&server.url, &ClientTls::Plaintext, ACME)
            .await
            .unwrap();
        let mut s = spec("acme");
        s.constraints.push(hodei_core::Constraint {
            key: "disk.kind/ssd".into(),
            op: hodei_core::ConstraintOp::In,
            values: vec!["yes".into()],
        });
        acme.submit(&s).await.unwrap();
        let assigned = loop {
            let m = timeout(WAIT, rx.message()).await.unwrap().unwrap().unwrap();
            if let Some(Out::AssignJob(a)) = m.msg {
                break a;
            }
        };
        assert!(!assigned.job_id.is_empty());
        drop(tx);
        server.shutdown().await;
    });
}
