//! What the TLS and security tests share: a server with its own CA on
//! 127.0.0.1, agents that join it, clients that trust it, and helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hodei_agent::{AgentConfig, Report, Shutdown, run_agent};
use hodei_core::{JobId, JobSpec};
use hodei_hwp::client::Client;
use hodei_hwp::proto::{self, JobStateKind};
use hodei_hwp::server::grpc::limits::LimitConfig;
use hodei_hwp::server::security::jwt::JwtConfig;
use hodei_hwp::server::security::pki::Pki;
use hodei_hwp::server::security::tls::{ServerTls, TlsSource};
use hodei_hwp::tls::{ClientTls, JoinToken};
use hodei_hwp::{EngineConfig, Principal, RunningServer, ServerBuilder, Tokens};
use hodei_store::{RedbStore, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

pub const WAIT: Duration = Duration::from_secs(30);
pub const JOIN: &str = "join-secret-for-tls-tests";
pub const ADMIN: &str = "admin-token-for-tls-tests";
pub const ACME: &str = "acme-token-for-tls-tests";

pub struct Cluster {
    pub dir: PathBuf,
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub tls: Arc<ServerTls>,
    stop: Option<oneshot::Sender<()>>,
    running: Option<RunningServer<RedbStore>>,
}

impl Cluster {
    pub async fn start(dir: &Path, cert_ttl: Duration) -> Cluster {
        Cluster::start_on(
            dir,
            cert_ttl,
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
    }

    pub async fn start_on(dir: &Path, cert_ttl: Duration, listener: TcpListener) -> Cluster {
        Cluster::start_full(dir, cert_ttl, listener, None, LimitConfig::default()).await
    }

    /// A server whose clients each have `limits`.
    pub async fn start_limited(dir: &Path, limits: LimitConfig) -> Cluster {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Cluster::start_full(dir, Duration::from_secs(3600), listener, None, limits).await
    }

    /// A server accepting JSON Web Tokens as `jwt` says.
    pub async fn start_jwt(dir: &Path, jwt: JwtConfig) -> Cluster {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Cluster::start_full(
            dir,
            Duration::from_secs(3600),
            listener,
            Some(jwt),
            LimitConfig::default(),
        )
        .await
    }

    pub async fn start_full(
        dir: &Path,
        cert_ttl: Duration,
        listener: TcpListener,
        jwt: Option<JwtConfig>,
        limits: LimitConfig,
    ) -> Cluster {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let source = TlsSource::Generated { names };
        Cluster::start_tls(dir, cert_ttl, listener, jwt, limits, source, None).await
    }

    /// A server with its certificate from `source`, accepting agents'
    /// certificates from `client_ca` too.
    pub async fn start_tls(
        dir: &Path,
        cert_ttl: Duration,
        listener: TcpListener,
        jwt: Option<JwtConfig>,
        limits: LimitConfig,
        source: TlsSource,
        client_ca: Option<PathBuf>,
    ) -> Cluster {
        let addr = listener.local_addr().unwrap();
        let pki = Arc::new(Pki::load_or_create(&dir.join("tls")).unwrap().0);
        let tls = ServerTls::new(source, client_ca, pki).unwrap();
        let store =
            Arc::new(RedbStore::open(dir.join("hodei.redb"), StoreConfig::default()).unwrap());
        let mut tokens = Tokens::new();
        tokens.add_join_token(JOIN);
        tokens.add_client_token(ADMIN, Principal::admin());
        tokens.add_client_token(ACME, Principal::tenant("acme".parse().unwrap()));
        let mut config = EngineConfig::default();
        config.heartbeat_interval = Duration::from_millis(200);
        config.heartbeat_timeout = Duration::from_secs(3);
        config.cancel_grace = Duration::from_millis(500);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = ServerBuilder::new(store, listener).limits(limits);
        if let Some(j) = jwt {
            builder = builder.jwt(j);
        }
        let running = builder
            .tls(Arc::clone(&tls))
            .tokens(tokens)
            .engine_config(config)
            .agent_cert_ttl(cert_ttl)
            .join_token_file(dir.join("join.token"))
            .start(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        Cluster {
            dir: dir.to_path_buf(),
            url: format!("https://{addr}"),
            addr,
            tls,
            stop: Some(stop),
            running: Some(running),
        }
    }

    pub fn trust(&self) -> ClientTls {
        ClientTls::ca_file(&self.dir.join("tls/ca.crt")).unwrap()
    }

    pub fn join_token(&self) -> String {
        JoinToken {
            ca: self.tls.fingerprint(),
            secret: JOIN.into(),
        }
        .to_string()
    }

    pub async fn client(&self, token: &str) -> Client {
        Client::connect(&self.url, &self.trust(), token)
            .await
            .unwrap()
    }

    pub fn agent(&self, state: &str, join: String) -> Agent {
        let mut config = AgentConfig::new(self.url.clone(), join);
        config.state_dir = self.dir.join(state);
        config.name = state.into();
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(300);
        config.cancel_grace = Duration::from_millis(500);
        config.exec.linger = Duration::from_millis(300);
        let (shutdown, rx) = watch::channel(Shutdown::Run);
        let task = tokio::spawn(async move { run_agent(config, rx).await.unwrap() });
        Agent { shutdown, task }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(r) = self.running.take() {
            timeout(WAIT, r.wait()).await.unwrap().unwrap();
        }
    }
}

pub struct Agent {
    shutdown: watch::Sender<Shutdown>,
    task: tokio::task::JoinHandle<Report>,
}

impl Agent {
    pub async fn stop(self, how: Shutdown) -> Report {
        self.shutdown.send(how).unwrap();
        timeout(WAIT, self.task).await.unwrap().unwrap()
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn ready_workers(c: &mut Client, n: usize) -> Vec<proto::Worker> {
    for _ in 0..300 {
        let w: Vec<_> = c
            .workers()
            .await
            .unwrap()
            .into_iter()
            .filter(|w| w.status == "ready")
            .collect();
        if w.len() >= n {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} ready workers");
}

pub async fn wait_final(c: &mut Client, job: JobId) -> proto::Job {
    for _ in 0..600 {
        let j = c.get(job).await.unwrap();
        if j.is_final {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} did not end");
}

pub fn kind(j: &proto::Job) -> JobStateKind {
    JobStateKind::try_from(j.state.as_ref().map(|s| s.kind).unwrap_or(0)).unwrap()
}

pub fn acme(script: &str) -> JobSpec {
    let mut s = JobSpec::script(script);
    s.tenant = "acme".parse().unwrap();
    s
}

pub async fn output(c: &mut Client, job: JobId) -> String {
    let mut s = c.logs(job, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await.unwrap() {
        out.extend(chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The error text of a failed connection or call, causes included.
pub fn text<E: std::fmt::Display>(r: Result<impl Sized, E>) -> String {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.to_string(),
    }
}

/// Opens an agent stream by hand with `tls` (an agent's credentials):
/// Register (as `worker_id`, or none), then the server's answer.
pub async fn register_by_hand(
    url: &str,
    tls: &ClientTls,
    worker_id: &str,
    name: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<proto::AgentMessage>,
        tonic::Streaming<proto::ServerMessage>,
    ),
    tonic::Status,
> {
    let mut c = hodei_hwp::client::connect_agent(url, tls, None)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::AgentMessage {
        msg: Some(proto::agent_message::Msg::Register(proto::Register {
            worker_id: worker_id.into(),
            name: name.into(),
            capacity: Some(proto::Resources {
                cpu_millis: 1000,
                memory_mb: 100,
                gpus: 0,
            }),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let inbound = c
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, inbound))
}
