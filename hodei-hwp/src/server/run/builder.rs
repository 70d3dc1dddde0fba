//! [`ServerBuilder`]: a whole server (engine, gRPC, HTTP endpoints) from
//! its parts, with one shutdown path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hodei_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::server::engine::{Engine, EngineConfig, EngineHandle};
use crate::server::grpc::limits::LimitConfig;
use crate::server::grpc::serve::{Services, serve_services};
use crate::server::http::api::{self, Api, Peer};
use crate::server::http::ui;
use crate::server::http::{Http, PlainListener, StatsOf, router};
use crate::server::run::error::ServerError;
use crate::server::security::Security;
use crate::server::security::auth::Tokens;
use crate::server::security::jwt::JwtConfig;
use crate::server::security::tls::{ServerTls, TlsListener, accept_tls};

/// What [`ServerConfig::run`] gives the builder, whichever the store.
#[derive(Clone)]
pub(crate) struct Parts {
    pub(crate) limits: LimitConfig,
    pub(crate) jwt: Option<JwtConfig>,
    pub(crate) tokens: Tokens,
    pub(crate) engine: EngineConfig,
    pub(crate) agent_cert_ttl: Duration,
    pub(crate) join_file: PathBuf,
    pub(crate) tls: Option<Arc<ServerTls>>,
}

impl Parts {
    pub(crate) fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
    }

    pub(crate) fn apply<S: Store>(
        self,
        b: ServerBuilder<S>,
        http: TcpListener,
    ) -> ServerBuilder<S> {
        let b = b
            .http_listener(http)
            .tokens(self.tokens)
            .engine_config(self.engine)
            .agent_cert_ttl(self.agent_cert_ttl)
            .join_token_file(self.join_file)
            .limits(self.limits);
        let b = match self.jwt {
            Some(j) => b.jwt(j),
            None => b,
        };
        match self.tls {
            Some(t) => b.tls(t),
            None => b,
        }
    }
}

pub(crate) async fn run_built<S: Store>(
    b: ServerBuilder<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: impl FnOnce(SocketAddr, SocketAddr),
) -> Result<(), ServerError> {
    let server = b.start(shutdown).await?;
    if let Some(http) = server.http_addr() {
        started(server.grpc_addr(), http);
    }
    server.wait().await
}

/// Assembles a server: a store, tokens, the engine's settings, a gRPC
/// listener and, optionally, an HTTP listener for `/metrics`, `/healthz`
/// and `/readyz`.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use hodei_hwp::{ServerBuilder, Tokens};
/// use hodei_store::{MemStore, StoreConfig};
///
/// let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let mut tokens = Tokens::new();
/// tokens.add_join_token("agents-secret");
/// let server = ServerBuilder::new(Arc::new(MemStore::new(StoreConfig::default())), grpc)
///     .tokens(tokens)
///     .start(async { /* resolve to stop */ })
///     .await?;
/// println!("gRPC on {}", server.grpc_addr());
/// server.wait().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ServerBuilder<S> {
    store: Arc<S>,
    grpc: TcpListener,
    http: Option<TcpListener>,
    tokens: Tokens,
    engine: EngineConfig,
    stats: StatsOf<S>,
    tls: Option<Arc<ServerTls>>,
    agent_cert_ttl: Duration,
    join_file: Option<PathBuf>,
    jwt: Option<JwtConfig>,
    limits: LimitConfig,
    epoch: Option<i64>,
}

/// How often the TLS files are checked for changes.
const TLS_POLL: Duration = Duration::from_secs(2);

/// A started server.
#[derive(Debug)]
pub struct RunningServer<S> {
    engine: EngineHandle<S>,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl<S: Store> ServerBuilder<S> {
    /// A server on `store`, serving gRPC on `grpc`, with no tokens (every
    /// call is refused until some are given) and the default settings.
    pub fn new(store: Arc<S>, grpc: TcpListener) -> Self {
        ServerBuilder {
            store,
            grpc,
            http: None,
            tokens: Tokens::new(),
            engine: EngineConfig::default(),
            stats: |_| None,
            tls: None,
            agent_cert_ttl: crate::server::security::pki::AGENT_CERT_TTL,
            join_file: None,
            jwt: None,
            limits: LimitConfig::default(),
            epoch: None,
        }
    }

    /// The leadership epoch this server runs in (a server on a shared
    /// database), shown by `/metrics`.
    pub fn leader_epoch(mut self, epoch: i64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// What each client may do: requests a second, streams at once
    /// [default: [`LimitConfig::default`]].
    pub fn limits(mut self, limits: LimitConfig) -> Self {
        self.limits = limits;
        self
    }

    /// Accepts JSON Web Tokens as `jwt` says, besides client tokens.
    pub fn jwt(mut self, jwt: JwtConfig) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// Serves both listeners over TLS; agents then join for a client
    /// certificate and connect with it. Without it, everything is
    /// plaintext.
    pub fn tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long the certificates signed for agents are valid (they renew
    /// at two thirds of it) [default: a day].
    pub fn agent_cert_ttl(mut self, ttl: Duration) -> Self {
        self.agent_cert_ttl = ttl;
        self
    }

    /// The file that holds the join token, rewritten when the token is
    /// rotated.
    pub fn join_token_file(mut self, path: PathBuf) -> Self {
        self.join_file = Some(path);
        self
    }

    /// The tokens agents and clients authenticate with.
    pub fn tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// The engine's settings.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
    pub fn http_listener(mut self, listener: TcpListener) -> Self {
        self.http = Some(listener);
        self
    }

    /// Where `/metrics` reads the store's group-commit counters.
    pub fn write_stats(mut self, stats: StatsOf<S>) -> Self {
        self.stats = stats;
        self
    }

    /// Recovers the engine from the store and starts serving. When
    /// `shutdown` resolves, the server reports itself not ready, ends
    /// agents' streams so they reconnect elsewhere, keeps its listeners
    /// open for the engine's `shutdown_delay`, stops accepting (the HTTP
    /// listener last), lets the engine finish what it holds, and
    /// [`RunningServer::wait`] returns.
    ///
    /// # Errors
    ///
    /// The engine cannot recover from the store, or a listener has no
    /// address.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningServer<S>, ServerError> {
        let listener = |what| move |source| ServerError::Listener { what, source };
        let grpc_addr = self.grpc.local_addr().map_err(listener("listen"))?;
        let http_addr = match &self.http {
            Some(h) => Some(h.local_addr().map_err(listener("http_listen"))?),
            None => None,
        };
        let security = Security::load(
            Arc::clone(&self.store),
            self.tls.clone(),
            self.agent_cert_ttl,
            &self.tokens,
            self.join_file.clone(),
            self.jwt,
        )
        .await?;
        let (engine, engine_task) = Engine::start(self.store, self.engine.clone()).await?;
        let state = Arc::new(Http {
            engine: engine.clone(),
            stats: self.stats,
            stopping: AtomicBool::new(false),
            epoch: self.epoch,
            tls: self.tls.clone(),
        });
        let services = Services::new(engine.clone(), security, self.limits, &self.engine);
        let api = Arc::new(Api {
            jobs: Arc::clone(&services.jobs),
            admin: Arc::clone(&services.admin),
            secure_cookies: self.tls.is_some(),
        });
        let (http_stop_tx, http_stop) = tokio::sync::oneshot::channel::<()>();
        let tls = self.tls.clone();
        let failures = engine.clone();
        let http_task = self.http.map(|http| {
            let app = router(Arc::clone(&state))
                .merge(api::router(api))
                .merge(ui::router())
                .into_make_service_with_connect_info::<Peer>();
            let stop = async move {
                let _ = http_stop.await;
            };
            tokio::spawn(async move {
                match (tls, http_addr) {
                    (Some(tls), Some(addr)) => {
                        let failed = move || {
                            failures
                                .metrics()
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                        };
                        let rx = accept_tls(http, tls, true, failed);
                        axum::serve(TlsListener { rx, addr }, app)
                            .with_graceful_shutdown(stop)
                            .await
                    }
                    _ => {
                        axum::serve(PlainListener(http), app)
                            .with_graceful_shutdown(stop)
                            .await
                    }
                }
            })
        });
        // Certificate files replaced (or a generated certificate nearing
        // its end) are picked up without a restart; open connections keep
        // theirs.
        let watcher = self.tls.clone().map(|tls| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TLS_POLL);
                loop {
                    tick.tick().await;
                    match tls.reload(false) {
                        Ok(true) => tracing::info!("TLS files changed: reloaded"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(
                            error = %e,
                            "TLS files changed but cannot be used; keeping the ones in use"
                        ),
                    }
                }
            })
        });
        let config = self.engine;
        let grpc = self.grpc;
        let task = tokio::spawn(async move {
            let ready = Arc::clone(&state);
            let served = serve_services(grpc, services, &config, async move {
                shutdown.await;
                ready.stopping.store(true, Ordering::Release);
            })
            .await;
            // The HTTP listener closes last: /readyz said 503 while gRPC
            // drained.
            let _ = http_stop_tx.send(());
            if let Some(w) = watcher {
                w.abort();
            }
            served?;
            if let Some(t) = http_task {
                t.await
                    .map_err(|e| ServerError::Task(e.to_string()))?
                    .map_err(|source| ServerError::Listener {
                        what: "http_listen",
                        source,
                    })?;
            }
            drop(state);
            // The engine ends once the last handle is gone; the store's
            // writer then commits what is queued and closes.
            engine_task
                .await
                .map_err(|e| ServerError::Task(e.to_string()))?;
            Ok(())
        });
        Ok(RunningServer {
            engine,
            grpc_addr,
            http_addr,
            task,
        })
    }
}

impl<S: Store> RunningServer<S> {
    /// Where gRPC is served.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the HTTP endpoints are served, if they are.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The engine, for in-process callers.
    pub fn engine(&self) -> &EngineHandle<S> {
        &self.engine
    }

    /// Waits until the server has stopped (after its shutdown future
    /// resolved) and its store is flushed.
    ///
    /// # Errors
    ///
    /// Serving failed, or a server task ended abnormally.
    pub async fn wait(self) -> Result<(), ServerError> {
        let RunningServer { engine, task, .. } = self;
        drop(engine);
        task.await.map_err(|e| ServerError::Task(e.to_string()))?
    }
}
