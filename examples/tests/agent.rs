//! The agent against a real Hodei server over gRPC and TLS on 127.0.0.1
//! (the agent joins with a pinned join token and connects with its own
//! certificate): real child processes, a real redb file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hodei_agent::{AgentConfig, Report, Shutdown, run_agent};
use hodei_core::{JobId, JobSpec, Secret};
use hodei_hwp::client::Client;
use hodei_hwp::proto::{self, JobStateKind};
use hodei_hwp::server::security::pki::Pki;
use hodei_hwp::server::security::tls::{ServerTls, TlsSource};
use hodei_hwp::tls::{ClientTls, JoinToken};
use hodei_hwp::{EngineConfig, Principal, RunningServer, ServerBuilder, Tokens};
use hodei_store::{RedbStore, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);
const JOIN: &str = "join-token-for-agent-tests";
const ADMIN: &str = "admin-token-for-agent-tests";

struct Server {
    stop: Option<oneshot::Sender<()>>,
    running: RunningServer<RedbStore>,
}

impl Server {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        timeout(WAIT, self.running.wait()).await.unwrap().unwrap();
    }
}

/// The CA of the server whose data directory is `dir` (made once, kept
/// across restarts).
fn pki(dir: &std::path::Path) -> Arc<Pki> {
    Arc::new(Pki::load_or_create(&dir.join("tls")).unwrap().0)
}

/// What clients trust.
fn trust(dir: &std::path::Path) -> ClientTls {
    ClientTls::ca_file(&pki(dir).ca_path()).unwrap()
}

/// A server on `listener`, storing in `path`, serving TLS with the CA
/// beside it.
async fn serve_on(listener: TcpListener, path: &std::path::Path) -> Server {
    let config = {
        let mut c = EngineConfig::default();
        c.heartbeat_timeout = Duration::from_secs(5);
        c.heartbeat_interval = Duration::from_millis(200);
        c.cancel_grace = Duration::from_millis(500);
        c
    };
    let store = Arc::new(RedbStore::open(path, StoreConfig::default()).unwrap());
    let names = vec!["127.0.0.1".to_string()];
    let dir = path.parent().unwrap();
    let tls = ServerTls::new(TlsSource::Generated { names }, None, pki(dir)).unwrap();
    let mut tokens = Tokens::new();
    tokens.add_join_token(JOIN);
    tokens.add_client_token(ADMIN, Principal::admin());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = ServerBuilder::new(store, listener)
        .tls(tls)
        .tokens(tokens)
        .engine_config(config)
        .start(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    Server {
        stop: Some(stop),
        running,
    }
}

struct Agent {
    shutdown: watch::Sender<Shutdown>,
    task: tokio::task::JoinHandle<Report>,
}

impl Agent {
    /// An agent of the server whose data directory is `dir`, joining with
    /// the pinned join token, keeping its identity in `dir/agent`.
    fn start(dir: &std::path::Path, url: &str, tweak: impl FnOnce(&mut AgentConfig)) -> Agent {
        let join = JoinToken {
            ca: pki(dir).fingerprint(),
            secret: JOIN.into(),
        };
        let mut config = AgentConfig::new(url, join.to_string());
        config.state_dir = dir.join("agent");
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(500);
        config.cancel_grace = Duration::from_millis(500);
        config.exec.linger = Duration::from_millis(500);
        tweak(&mut config);
        let (shutdown, rx) = watch::channel(Shutdown::Run);
        let task = tokio::spawn(async move { run_agent(config, rx).await.unwrap() });
        Agent { shutdown, task }
    }

    async fn stop(self, how: Shutdown) -> Report {
        self.shutdown.send(how).unwrap();
        timeout(WAIT, self.task).await.unwrap().unwrap()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn setup(dir: &std::path::Path) -> (String, Server, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let server = serve_on(listener, &dir.join("hodei.redb")).await;
    let client = Client::connect(&url, &trust(dir), ADMIN).await.unwrap();
    (url, server, client)
}

fn script(s: &str) -> JobSpec {
    let mut spec = JobSpec::script(s);
    spec.tenant = "acme".parse().unwrap();
    spec
}

async fn submit(c: &mut Client, spec: &JobSpec) -> JobId {
    c.submit(spec).await.unwrap().0.id.parse().unwrap()
}

fn kind(job: &proto::Job) -> JobStateKind {
    job.state
        .as_ref()
        .and_then(|s| JobStateKind::try_from(s.kind).ok())
        .unwrap_or(JobStateKind::Unspecified)
}

/// Polls until the job is in one of `want` (bounded).
async fn wait_for(c: &mut Client, job: JobId, want: &[JobStateKind]) -> proto::Job {
    for _ in 0..600 {
        let j = c.get(job).await.unwrap();
        if want.contains(&kind(&j)) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} never reached {want:?}: {:?}", c.get(job).await);
}

/// The stored log of a job: (stdout, stderr, system bytes, batches).
async fn streams(c: &mut Client, job: JobId) -> (Vec<u8>, Vec<u8>, Vec<u8>, usize) {
    let mut s = c.logs(job, false).await.unwrap();
    let (mut out, mut err, mut system, mut n) = (Vec::new(), Vec::new(), Vec::new(), 0);
    while let Some(chunk) = s.message().await.unwrap() {
        n += 1;
        match proto::LogStream::try_from(chunk.stream) {
            Ok(proto::LogStream::Stdout) => out.extend(chunk.data),
            Ok(proto::LogStream::Stderr) => err.extend(chunk.data),
            _ => system.extend(chunk.data),
        }
    }
    (out, err, system, n)
}

/// The stored log of a job: (stdout + stderr bytes, system bytes, batches).
async fn logs(c: &mut Client, job: JobId) -> (Vec<u8>, Vec<u8>, usize) {
    let (mut out, err, system, n) = streams(c, job).await;
    out.extend(err);
    (out, system, n)
}

/// `pid` is gone within 5 s (for the kernel to tear it down).
async fn assert_gone(pid: i32) {
    for _ in 0..100 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} survived its job");
}

fn alive(pid: i32) -> bool {
    // Zombies are not alive: look at the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn ten_thousand_lines_arrive_whole_in_order_and_in_few_batches() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (url, server, mut c) = setup(dir.path()).await;
        let agent = Agent::start(dir.path(), &url, |_| {});
        let job = submit(&mut c, &script("seq 1 10000")).await;
        let done = wait_for(
            &mut c,
            job,
            &[JobStateKind::Succeeded, JobStateKind::Failed],
        )
        .await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        let (out, err, _, batches) = streams(&mut c, job).await;
        let want: String = (1..=10000).map(|i| format!("{i}\n")).collect();
        assert!(
            out == want.as_bytes(),
            "stdout differs ({} bytes)",
            out.len()
        );
        assert!(err.is_empty());
        assert!(batches <= 100, "{batches} batches");
        let report = agent.stop(Shutdown::Drain).await;
        assert!(report.is_clean());
        assert_eq!(report.jobs_run, 1);
        server.stop().await;
    });
}

#[test]
fn secrets_never_reach_the_log_even_split_across_reads() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (url, server, mut c) = setup(dir.path()).await;
        let agent = Agent::start(dir.path(), &url, |_| {});
        let secret = "hunter2-very-secret";
        let mut spec = script(
            r#"
            printf 'start %s' "$(printf %s "$TOKEN" | cut -c1-7)"
            sleep 0.3
            printf '%s end\n' "$(printf %s "$TOKEN" | cut -c8-)"
            printf %s "$TOKEN" | base64
            printf 'x%s' "$TOKEN" | base64
            printf 'xy%s' "$TOKEN" | base64
            echo "$TOKEN" >&2
            echo done
            "#,
        );
        spec.secrets.push(Secret {
            name: "TOKEN".into(),
            value: secret.into(),
        });
        let job = submit(&mut c, &spec).await;
        let done = wait_for(
            &mut c,
            job,
            &[JobStateKind::Succeeded, JobStateKind::Failed],
        )
        .await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        let (out, _, _) = logs(&mut c, job).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("start *** end"), "{text}");
        assert!(text.contains("done"));
        assert!(!text.contains(secret));
        assert!(!text.contains("aHVudGVyMi12ZXJ5LXNlY3JldA"), "{text}");
        agent.stop(Shutdown::Drain).await;
        server.stop().await;
    });
}

#[test]
fn cancel_stops_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (url, server, mut c) = setup(dir.path()).await;
        let agent = Agent::start(dir.path(), &url, |_| {});
        let pidfile = dir.path().join("pids");
        let spec = script(&format!(
            "sh -c 'trap \"\" TERM; while true; do sleep 1; done' & echo $! > {p}; echo $$ >> {p}; echo running; wait",
            p = pidfile.display()
        ));
        let job = submit(&mut c, &spec).await;
        wait_for(&mut c, job, &[JobStateKind::Running]).await;
        for _ in 0..100 {
            if std::fs::read_to_string(&pidfile).is_ok_and(|s| s.lines().count() == 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        c.cancel(job).await.unwrap();
        let done = wait_for(&mut c, job, &[JobStateKind::Cancelled]).await;
        assert_eq!(kind(&done), JobStateKind::Cancelled);
        // The grandchild ignores SIGTERM; SIGKILL after the grace ends it.
        for _ in 0..100 {
            if pids.iter().all(|p| !alive(*p)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for p in pids {
            assert!(!alive(p), "process {p} survived its job");
        }
        let (out, _, _) = logs(&mut c, job).await;
        assert!(String::from_utf8_lossy(&out).contains("running"));
        let report = agent.stop(Shutdown::Drain).await;
        assert!(report.is_clean(), "{report:?}");
        server.stop().await;
    });
}

#[test]
fn a_timeout_ends_the_job_and_a_lingering_grandchild_does_not_hang_it() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (url, server, mut c) = setup(dir.path()).await;
        let agent = Agent::start(dir.path(), &url, |_| {});
        let mut slow = script("echo begin; sleep 30");
        slow.timeout = Some(Duration::from_millis(500));
        let slow = submit(&mut c, &slow).await;
        // The main process exits at once; the grandchild keeps stdout open.
        let pidfile = dir.path().join("grandchild");
        let lingering = script(&format!(
            "sh -c 'trap \"\" TERM; sleep 60' & echo $! > {}; echo parent-done",
            pidfile.display()
        ));
        let lingering = submit(&mut c, &lingering).await;
        let started = std::time::Instant::now();
        let done = wait_for(
            &mut c,
            lingering,
            &[JobStateKind::Succeeded, JobStateKind::Failed],
        )
        .await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        assert!(started.elapsed() < Duration::from_secs(20));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_gone(pid).await;
        let done = wait_for(
            &mut c,
            slow,
            &[
                JobStateKind::TimedOut,
                JobStateKind::Failed,
                JobStateKind::Succeeded,
            ],
        )
        .await;
        assert_eq!(kind(&done), JobStateKind::TimedOut);
        let (out, system, _) = logs(&mut c, slow).await;
        assert_eq!(out, b"begin\n");
        assert!(String::from_utf8_lossy(&system).contains("timed out"));
        agent.stop(Shutdown::Drain).await;
        server.stop().await;
    });
}

#[test]
fn logs_and_result_survive_a_server_restart_mid_job() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("https://{addr}");
        let db = dir.path().join("hodei.redb");
        let server = serve_on(listener, &db).await;
        let mut c = Client::connect(&url, &trust(dir.path()), ADMIN).await.unwrap();
        // Small memory bound: what waits while the server is away spills.
        let agent = Agent::start(dir.path(), &url, |c| c.memory_limit = 1024);
        let job = submit(
            &mut c,
            &script("for i in $(seq 1 40); do echo line-$i; head -c 300 /dev/zero | tr '\\0' x; echo; sleep 0.05; done"),
        )
        .await;
        wait_for(&mut c, job, &[JobStateKind::Running]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.stop().await;
        drop(c);
        // Away long enough for the job to finish while disconnected.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let listener = TcpListener::bind(addr).await.unwrap();
        let server = serve_on(listener, &db).await;
        let mut c = Client::connect(&url, &trust(dir.path()), ADMIN).await.unwrap();
        let done = wait_for(
            &mut c,
            job,
            &[
                JobStateKind::Succeeded,
                JobStateKind::Failed,
                JobStateKind::Lost,
            ],
        )
        .await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        let report = agent.stop(Shutdown::Drain).await;
        assert!(report.is_clean(), "{report:?}");
        let (out, _, _) = logs(&mut c, job).await;
        let want: String = (1..=40)
            .map(|i| format!("line-{i}\n{}\n", "x".repeat(300)))
            .collect();
        assert!(out == want.as_bytes(), "log differs ({} bytes)", out.len());
        server.stop().await;
    });
}

#[test]
fn drain_lets_running_jobs_finish_then_cancels_past_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (url, server, mut c) = setup(dir.path()).await;
        let agent = Agent::start(dir.path(), &url, |c| c.drain_grace = Duration::from_secs(2));
        let short = submit(&mut c, &script("sleep 0.5; echo short-done")).await;
        let long = submit(&mut c, &script("echo long-begins; sleep 60")).await;
        wait_for(&mut c, short, &[JobStateKind::Running]).await;
        wait_for(&mut c, long, &[JobStateKind::Running]).await;
        let report = agent.stop(Shutdown::Drain).await;
        assert!(report.is_clean(), "{report:?}");
        let s = c.get(short).await.unwrap();
        assert_eq!(kind(&s), JobStateKind::Succeeded);
        // Cancelled by the agent: the attempt failed on a signal and
        // waits for another worker.
        let l = c.get(long).await.unwrap();
        assert!(
            matches!(kind(&l), JobStateKind::Failed | JobStateKind::Queued),
            "{l:?}"
        );
        let (out, _, _) = logs(&mut c, long).await;
        assert_eq!(out, b"long-begins\n");
        let workers = c.workers().await.unwrap();
        assert_eq!(workers.len(), 1);
        server.stop().await;
    });
}

/// A job whose descendant left its session and holds its stdout still ends
/// when its main process does, the descendant is killed, and the worker's
/// reservation is released for the next job.
#[test]
fn a_descendant_in_its_own_session_neither_hangs_the_job_nor_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (url, server, mut c) = setup(dir.path()).await;
        let agent = Agent::start(dir.path(), &url, |cfg| {
            // Room for one job at a time: the second job runs only once
            // the first one's reservation is gone.
            cfg.capacity = hodei_core::Resources::new(1000, 1024, 0);
        });
        let mut spec =
            script("setsid sh -c 'echo \"pid $$\"; exec sleep 300' &\nsleep 0.2\necho main-done");
        spec.resources = hodei_core::Resources::new(1000, 64, 0);
        let first = submit(&mut c, &spec).await;
        let mut next = script("echo second");
        next.resources = hodei_core::Resources::new(1000, 64, 0);
        let second = submit(&mut c, &next).await;
        let done = wait_for(&mut c, first, &[JobStateKind::Succeeded]).await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        wait_for(&mut c, second, &[JobStateKind::Succeeded]).await;
        let (out, _, _) = logs(&mut c, first).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(out.contains("main-done"), "{out}");
        let pid: i32 = out
            .lines()
            .find_map(|l| l.strip_prefix("pid "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_gone(pid).await;
        let report = agent.stop(Shutdown::Drain).await;
        assert!(report.is_clean(), "{report:?}");
        server.stop().await;
    });
}
