//! [`ServerBuilder`]: a whole server (engine, gRPC, HTTP endpoints) from
//! its parts, with one shutdown path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hodei_store::{MemStore, RedbStore, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::api::{self, Api, Peer};
use super::auth::Tokens;
use super::engine::{Engine, EngineConfig, EngineError, EngineHandle};
use super::http::{Http, PlainListener, StatsOf, router};
use super::jwt::JwtConfig;
use super::limits::LimitConfig;
use super::pki::Pki;
use super::secrets::SecretKeys;
use super::security::{Security, SecurityError};
use super::serve::ServeError;
use super::serve::{Services, serve_services};
use super::settings::{ServerConfig, ServerTlsConfig, StoreKind};
use super::tls::TlsSource;
use super::tls::{ServerTls, TlsListener, accept_tls};
use super::ui;

/// Why a server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The engine could not recover from the store.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// Serving gRPC failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A listener could not be bound.
    #[error("{what}: cannot bind {addr}: {source}")]
    Bind {
        /// Which listener (its setting).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener failed.
    #[error("{what}: {source}")]
    Listener {
        /// Which listener.
        what: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A server task ended abnormally.
    #[error("server task: {0}")]
    Task(String),
    /// The agent credentials could not be loaded.
    #[error("credentials: {0}")]
    Security(#[from] SecurityError),
    /// The TLS files could not be used.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The secrets key file could not be used.
    #[error("secrets key: {0}")]
    Secrets(#[from] crate::server::secrets::SecretsError),
    /// The shared database cannot be used (a newer schema, say).
    #[error("database: {0}")]
    Database(#[source] hodei_store::StoreError),
    /// The store could not be opened.
    #[error("store {path}: {source}")]
    Store {
        /// Its file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: hodei_store::StoreError,
    },
}

impl ServerConfig {
    /// The server's TLS as these settings describe it: `None` for
    /// plaintext; otherwise the server's own CA in `<data_dir>/tls` (made
    /// on first start, with a server certificate unless files are given).
    /// Returns it and the files just made.
    ///
    /// # Errors
    ///
    /// [`ServerError::Tls`] naming the file that cannot be made or used.
    pub fn server_tls(&self) -> Result<(Option<Arc<ServerTls>>, Vec<PathBuf>), ServerError> {
        let ServerTlsConfig::Tls { source, client_ca } = &self.tls else {
            return Ok((None, Vec::new()));
        };
        let (pki, mut made) = Pki::load_or_create(&self.data_dir.join("tls"))?;
        let pki = Arc::new(pki);
        let fresh = !pki.server_cert_path().exists();
        let tls = ServerTls::new(source.clone(), client_ca.clone(), Arc::clone(&pki))?;
        if fresh && matches!(source, TlsSource::Generated { .. }) {
            made.push(pki.server_cert_path());
        }
        Ok((Some(tls), made))
    }

    /// Loads the key that seals jobs' secret values
    /// (`<data_dir>/secrets.key`, made on first start) into the engine's
    /// settings. Returns whether the file was just made. [`run`](Self::run)
    /// does it when it was not done.
    ///
    /// # Errors
    ///
    /// [`ServerError::Secrets`]: the file cannot be made, read or trusted.
    pub fn load_secret_keys(&mut self) -> Result<bool, ServerError> {
        let (keys, made) = SecretKeys::load_or_create(&self.data_dir.join("secrets.key"))?;
        self.engine.secret_keys = Some(Arc::new(keys));
        Ok(made)
    }

    /// For `--store postgres`: brings the database's schema to this
    /// build's version and, with `from_redb`, copies that redb store's
    /// jobs, logs, tokens and audit chain into it (checking the chain
    /// after). Returns what it did, to print.
    ///
    /// # Errors
    ///
    /// [`ServerError::Database`]: not a PostgreSQL configuration, the
    /// database unreachable or of a newer schema, the copy failed (a
    /// non-empty database is refused: a copy goes into a fresh one).
    pub async fn migrate(
        &self,
        from_redb: Option<&std::path::Path>,
    ) -> Result<String, ServerError> {
        use hodei_store::StoreError;
        let db_err = ServerError::Database;
        let pg = self.postgres.as_ref().ok_or_else(|| {
            db_err(StoreError::storage_message(
                "migrate needs --store postgres and --database-url",
            ))
        })?;
        let db = hodei_store::pg::PgDatabase::connect(&pg.url, 4)
            .await
            .map_err(db_err)?;
        let was = db.migrate().await.map_err(db_err)?;
        let mut said = format!(
            "schema at version {} (was {was})",
            hodei_store::pg::SCHEMA_VERSION
        );
        if let Some(path) = from_redb {
            let from = RedbStore::open(path, self.store).map_err(|source| ServerError::Store {
                path: path.to_path_buf(),
                source,
            })?;
            let to = db.store(self.store, None).await.map_err(db_err)?;
            let any = to
                .list_jobs(hodei_store::JobFilter {
                    limit: 1,
                    ..Default::default()
                })
                .await
                .map_err(db_err)?;
            if !any.jobs.is_empty() || !to.audit_records(0, 1).await.map_err(db_err)?.is_empty() {
                return Err(db_err(StoreError::storage_message(
                    "the database already holds jobs or audit records: copy into an empty one",
                )));
            }
            let c = hodei_store::pg::copy_redb(&from, &to)
                .await
                .map_err(db_err)?;
            said.push_str(&format!(
                "; copied {} jobs, {} attempts, {} log chunks, {} credentials and {} audit records from {} (the audit chain verifies)",
                c.jobs,
                c.attempts,
                c.log_chunks,
                c.credentials,
                c.audit_records,
                path.display()
            ));
        }
        Ok(said)
    }

    /// Runs the server these settings describe until `shutdown` resolves:
    /// binds both listeners, opens the store in the data directory (or
    /// memory), starts (over `tls`, from [`server_tls`](Self::server_tls),
    /// when given), calls `started` with the gRPC and HTTP addresses, and
    /// returns once it has stopped and its store is flushed.
    ///
    /// # Errors
    ///
    /// A listener cannot be bound (naming its setting), the store cannot
    /// be opened, or serving fails.
    pub async fn run(
        self,
        tokens: Tokens,
        tls: Option<Arc<ServerTls>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        started: impl FnOnce(SocketAddr, SocketAddr),
    ) -> Result<(), ServerError> {
        let mut this = self;
        if this.engine.secret_keys.is_none() {
            this.load_secret_keys()?;
        }
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { what, addr, source })
        };
        let grpc = bind("listen", this.listen).await?;
        let http = bind("http_listen", this.http_listen).await?;
        let jwt = match &this.jwt {
            Some(j) => Some(JwtConfig::from_file(
                &j.key,
                &j.issuer,
                &j.audience,
                &j.tenant_claim,
                &j.role_claim,
            )?),
            None => None,
        };
        let parts = Parts {
            limits: this.limits,
            jwt,
            tokens,
            engine: this.engine,
            agent_cert_ttl: this.agent_cert_ttl,
            join_file: this.data_dir.join("join.token"),
            tls,
        };
        match this.store_kind {
            StoreKind::Memory => {
                let store = Arc::new(MemStore::new(this.store));
                run_built(
                    parts.apply(ServerBuilder::new(store, grpc), http),
                    shutdown,
                    started,
                )
                .await
            }
            StoreKind::Postgres => {
                let pg = this.postgres.clone().ok_or_else(|| {
                    ServerError::Task("--store postgres without --database-url".into())
                })?;
                super::replica::run(
                    super::replica::Replica {
                        pg,
                        store: this.store,
                        listen: this.listen,
                        http_listen: this.http_listen,
                        parts,
                    },
                    (grpc, http),
                    shutdown,
                    started,
                )
                .await
            }
            _ => {
                let path = this.data_dir.join("hodei.redb");
                let store = RedbStore::open(&path, this.store)
                    .map_err(|source| ServerError::Store { path, source })?;
                let b = ServerBuilder::new(Arc::new(store), grpc)
                    .write_stats(|s: &RedbStore| Some(s.write_stats()));
                run_built(parts.apply(b, http), shutdown, started).await
            }
        }
    }
}

/// What [`ServerConfig::run`] gives the builder, whichever the store.
#[derive(Clone)]
pub(crate) struct Parts {
    limits: LimitConfig,
    jwt: Option<JwtConfig>,
    tokens: Tokens,
    engine: EngineConfig,
    agent_cert_ttl: Duration,
    join_file: PathBuf,
    tls: Option<Arc<ServerTls>>,
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

/// How long an agent's certificate is valid by default.
pub const AGENT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

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
            agent_cert_ttl: AGENT_CERT_TTL,
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
