//! The services over real gRPC on 127.0.0.1 (OS-chosen ports): a test
//! agent speaks WorkerService, clients speak JobService.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hodei_core::{JobId, JobSpec, Secret, WorkerId};
use hodei_hwp::client::{Client, connect_agent};
use hodei_hwp::proto::{self, agent_message::Msg as In, server_message::Msg as Out};
use hodei_hwp::{Engine, EngineConfig, Principal, Tokens, serve};
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
    let config = EngineConfig {
        heartbeat_timeout: Duration::from_millis(800),
        heartbeat_interval: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let store = Arc::new(RedbStore::open(path, StoreConfig::default()).unwrap());
    let (engine, engine_task) = Engine::start(store, config.clone()).await.unwrap();
    let mut tokens = Tokens::new();
    tokens.add_join_token(JOIN);
    tokens.add_client_token(ADMIN, Principal::Admin);
    tokens.add_client_token(ACME, Principal::Tenant("acme".parse().unwrap()));
    tokens.add_client_token(GLOBEX, Principal::Tenant("globex".parse().unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        serve(listener, engine, tokens, &config, async {
            let _ = stopped.await;
        })
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
    let mut c = connect_agent(url, JOIN).await.unwrap();
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
        let mut c = Client::connect(&server.url, ACME).await.unwrap();
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
        let mut c = Client::connect(&server.url, ACME).await.unwrap();
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
        let mut c = Client::connect(&server.url, ACME).await.unwrap();
        let mut s = spec("acme");
        s.retry.max_attempts = 2;
        s.retry.backoff.initial = Duration::from_millis(10);
        s.retry.jitter = 0.0;
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
        let mut c = Client::connect(&server.url, ADMIN).await.unwrap();
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
        let mut c = Client::connect(&server.url, ADMIN).await.unwrap();
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
        let mut acme = Client::connect(&server.url, ACME).await.unwrap();
        let mut globex = Client::connect(&server.url, GLOBEX).await.unwrap();
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
        let mut stranger = Client::connect(&server.url, "not-a-token").await.unwrap();
        let err = stranger.submit(&spec("acme")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // An agent with a client token is refused.
        let mut c = connect_agent(&server.url, ACME).await.unwrap();
        let (tx, out) = mpsc::channel(4);
        tx.send(register(None, vec![])).await.unwrap();
        let err = c
            .connect(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // An agent whose first message is not Register is refused.
        let mut c = connect_agent(&server.url, JOIN).await.unwrap();
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
        let mut acme = Client::connect(&server.url, ADMIN).await.unwrap();
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
        let mut c = Client::connect(&server.url, ACME).await.unwrap();
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
        let mut admin = Client::connect(&server.url, ADMIN).await.unwrap();
        let mut acme = Client::connect(&server.url, ACME).await.unwrap();
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
