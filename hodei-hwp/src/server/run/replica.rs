//! Several servers on one PostgreSQL database: one leads (holds the lease
//! and runs the engine), the others stand by and take over when its lease
//! lapses.
//!
//! A standby keeps both listeners open: gRPC calls are answered
//! UNAVAILABLE with the leader's endpoint in `hodei-leader` metadata (the
//! client and agents go there), `/readyz` answers 503 and `/metrics` shows
//! the role. Once it takes the lease it becomes a server as a lone one is,
//! recovering from the store; agents re-attach as after a restart.
//!
//! A leader steps down, back to standby, when another server holds the
//! lease, when it could not renew within the lease's time (a stopped
//! process, a lost database), or when a commit failed (its engine's state
//! may no longer match the store's, so it starts again from the store).
//! Its writes are fenced by its epoch in any case: a deposed leader
//! changes nothing even before it notices.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::routing::get;
use hodei_store::StoreConfig;
use hodei_store::pg::{Lease, PgDatabase, PgStore};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

use crate::client::LEADER_HINT;
use crate::server::http::role_metrics;
use crate::server::run::builder::{Parts, ServerBuilder, run_built};
use crate::server::run::error::ServerError;
use crate::server::run::settings::PostgresConfig;
use crate::server::security::tls::{ServerTls, TlsListener, accept_tls};

/// Pool connections for reads and the lease, besides the writer's own.
const POOL: usize = 8;

/// What a server on a shared database needs besides its listeners.
pub(crate) struct Replica {
    pub(crate) pg: PostgresConfig,
    pub(crate) store: StoreConfig,
    pub(crate) listen: SocketAddr,
    pub(crate) http_listen: SocketAddr,
    pub(crate) parts: Parts,
}

/// Why a leadership ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    Deposed(String),
}

/// What standbys tell callers.
#[derive(Default)]
struct Seen {
    grpc: Option<String>,
    http: Option<String>,
    epoch: i64,
}

/// Runs a server on the shared database until `shutdown` resolves,
/// standing by and leading in turn.
pub(crate) async fn run(
    r: Replica,
    listeners: (TcpListener, TcpListener),
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: impl FnOnce(SocketAddr, SocketAddr),
) -> Result<(), ServerError> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let holder = format!(
        "{}-{}-{:08x}",
        crate::settings::host_name().unwrap_or_else(|| "hodei".into()),
        std::process::id(),
        rand::random::<u32>()
    );
    let (g, h) = (
        listeners.0.local_addr().map_err(listener("listen"))?,
        listeners.1.local_addr().map_err(listener("http_listen"))?,
    );
    started(g, h);
    // Each role binds the listeners again: on the ports first bound (a
    // port 0 resolves once), advertised as such.
    let mut r = r;
    r.listen = g;
    r.http_listen = h;
    for (adv, port) in [
        (&mut r.pg.advertise, g.port()),
        (&mut r.pg.advertise_http, h.port()),
    ] {
        if let Some(base) = adv.strip_suffix(":0") {
            *adv = format!("{base}:{port}");
        }
    }
    let mut listeners = Some(listeners);
    let mut db: Option<PgDatabase> = None;
    loop {
        let (grpc, http) = match listeners.take() {
            Some(l) => l,
            None => bind(r.listen, r.http_listen).await?,
        };
        let epoch = match stand_by(&r, &holder, &mut db, grpc, http, stop.clone()).await? {
            Some(e) => e,
            None => return Ok(()),
        };
        let Some(database) = db.clone() else { continue };
        let lease = database.lease(&holder, r.pg.lease);
        tracing::info!(epoch, "leading: took the lease");
        match lead(&r, &database, &lease, epoch, stop.clone()).await? {
            Ended::Shutdown => {
                let _ = tokio::time::timeout(Duration::from_secs(2), lease.release(epoch)).await;
                tracing::info!(epoch, "stopped; lease released");
                return Ok(());
            }
            Ended::Deposed(why) => {
                tracing::warn!(epoch, reason = %why, "stepping down to standby");
                // Still this server's after a failed commit: given up at
                // once, so a standby (or this server, afresh) need not wait
                // for it to lapse. A no-op once another epoch holds it.
                let _ = tokio::time::timeout(Duration::from_secs(2), lease.release(epoch)).await;
            }
        }
    }
}

fn listener(what: &'static str) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Listener { what, source }
}

async fn bind(
    grpc: SocketAddr,
    http: SocketAddr,
) -> Result<(TcpListener, TcpListener), ServerError> {
    let one = |what: &'static str, addr: SocketAddr| async move {
        // The previous role's sockets close as it ends; a few tries cover
        // the moment between.
        let mut tries = 0;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Ok(l),
                Err(e) if tries < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => return Err(ServerError::Bind { what, addr, source }),
            }
        }
    };
    Ok((one("listen", grpc).await?, one("http_listen", http).await?))
}

/// Serves as a standby until this server takes the lease (its epoch) or
/// `stop` (None). Connects (and migrates) the database first, retrying
/// while it is unreachable.
async fn stand_by(
    r: &Replica,
    holder: &str,
    db: &mut Option<PgDatabase>,
    grpc: TcpListener,
    http: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<i64>, ServerError> {
    let seen = Arc::new(RwLock::new(Seen::default()));
    let (quit_tx, quit) = watch::channel(false);
    let tls = r.parts.tls().cloned();
    let grpc_task = tokio::spawn(serve_grpc(
        grpc,
        tls.clone(),
        Arc::clone(&seen),
        quit.clone(),
    ));
    let http_task = tokio::spawn(serve_http(http, tls, Arc::clone(&seen), quit));
    let poll = (r.pg.lease / 6).max(Duration::from_millis(50));
    let mut complained = Instant::now() - Duration::from_secs(60);
    let outcome = loop {
        if *stop.borrow_and_update() {
            break Ok(None);
        }
        let step = async {
            if db.is_none() {
                let d = PgDatabase::connect(&r.pg.url, POOL).await?;
                d.migrate().await?;
                *db = Some(d);
            }
            let Some(d) = db.as_ref() else {
                return Ok(None);
            };
            let lease = d.lease(holder, r.pg.lease);
            if let Some(epoch) = lease
                .try_acquire(&r.pg.advertise, &r.pg.advertise_http)
                .await?
            {
                return Ok(Some(epoch));
            }
            let cur = lease.current().await?;
            let mut s = seen.write();
            s.epoch = cur.epoch;
            s.grpc = cur.grpc.filter(|_| cur.live);
            s.http = cur.http.filter(|_| cur.live);
            Ok::<_, hodei_store::StoreError>(None)
        };
        match step.await {
            Ok(Some(epoch)) => break Ok(Some(epoch)),
            Ok(None) => {}
            // A database this build cannot read is not going to change.
            Err(e @ hodei_store::StoreError::UnsupportedSchema { .. }) => {
                break Err(ServerError::Database(e));
            }
            Err(e) => {
                if complained.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(error = %e, "standby: the database is unreachable; retrying");
                    complained = Instant::now();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => {}
        }
    };
    let _ = quit_tx.send(true);
    let _ = grpc_task.await;
    let _ = http_task.await;
    outcome
}

/// Leads until shut down or deposed.
async fn lead(
    r: &Replica,
    db: &PgDatabase,
    lease: &Lease,
    epoch: i64,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, ServerError> {
    let store: PgStore = match db.store(r.store, Some(epoch)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = lease.release(epoch).await;
            return Ok(Ended::Deposed(format!("cannot open the store: {e}")));
        }
    };
    let (grpc, http) = bind(r.listen, r.http_listen).await?;
    let ended = Arc::new(RwLock::new(None::<Ended>));
    let watch_store = store.clone();
    let (lease2, ended2) = (lease.clone(), Arc::clone(&ended));
    let shutdown = async move {
        let why = tokio::select! {
            _ = stop.wait_for(|s| *s) => Ended::Shutdown,
            e = watch_store.failed() => Ended::Deposed(format!("a commit failed: {e}")),
            why = keep_lease(&lease2, epoch) => Ended::Deposed(why),
        };
        *ended2.write() = Some(why);
    };
    let b = r
        .parts
        .clone()
        .apply(ServerBuilder::new(Arc::new(store), grpc), http)
        .write_stats(|s: &PgStore| Some(s.write_stats()))
        .leader_epoch(epoch);
    run_built(b, shutdown, |_, _| {}).await?;
    let why = ended.write().take();
    Ok(why.unwrap_or(Ended::Shutdown))
}

/// Renews the lease every third of its time; resolves, saying why, once
/// it is no longer this server's or could not be renewed in time.
async fn keep_lease(lease: &Lease, epoch: i64) -> String {
    let ttl = lease.ttl();
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let asked = Instant::now();
        match tokio::time::timeout(ttl / 3, lease.renew(epoch)).await {
            Ok(Ok(true)) => renewed = asked,
            Ok(Ok(false)) => return "another server holds the lease".into(),
            Ok(Err(e)) if renewed.elapsed() >= ttl => {
                return format!("could not renew the lease in time: {e}");
            }
            Err(_) if renewed.elapsed() >= ttl => {
                return "could not renew the lease in time".into();
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            Err(_) => tracing::warn!("lease renewal timed out; retrying"),
        }
        // Paused past the lease (a stopped process): deposed whatever the
        // database now says.
        if renewed.elapsed() >= ttl {
            return "the lease ran out before it was renewed".into();
        }
    }
}

/// The answer to every gRPC call on a standby: UNAVAILABLE, naming the
/// leader when one is known.
fn standby_status(seen: &Seen) -> Response<Body> {
    let message = match &seen.grpc {
        Some(l) => format!("this server is a standby; the leader is {l}"),
        None => "this server is a standby; no server leads at the moment".into(),
    };
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("14"));
    let encoded =
        percent_encoding::utf8_percent_encode(&message, percent_encoding::CONTROLS).to_string();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    if let Some(v) = seen
        .grpc
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        h.insert(LEADER_HINT, v);
    }
    resp
}

async fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    seen: Arc<RwLock<Seen>>,
    mut quit: watch::Receiver<bool>,
) {
    let app = axum::Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move { standby_status(&seen.read()) }
    });
    let router = tonic::transport::Server::builder().add_routes(tonic::service::Routes::from(app));
    let stop = async move {
        let _ = quit.wait_for(|q| *q).await;
    };
    let served = match tls {
        None => {
            let incoming = TcpListenerStream::new(listener).map(|c| {
                let c = c?;
                c.set_nodelay(true)?;
                Ok::<_, std::io::Error>(c)
            });
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
        Some(tls) => {
            let ready = accept_tls(listener, tls, false, || {});
            let incoming = tokio_stream::wrappers::ReceiverStream::new(ready)
                .map(|(c, _)| Ok::<_, std::io::Error>(c));
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    if let Err(e) = served {
        tracing::warn!(error = %e, "standby gRPC listener failed");
    }
}

/// What a standby answers on a path only the leader serves.
fn standby_answer(leader: Option<String>, uri: &axum::http::Uri) -> Response<Body> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let dashboard = uri.path() == "/" || uri.path().starts_with("/ui");
    let mut r = match (&leader, dashboard) {
        (Some(l), true) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            if let Ok(v) = HeaderValue::from_str(&format!("{}{path}", l.trim_end_matches('/'))) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        _ => {
            let detail = match &leader {
                Some(l) => format!("this server is a standby; the leader serves the API at {l}"),
                None => "this server is a standby and no leader is known yet".to_string(),
            };
            let body = serde_json::json!({
                "type": "https://hodei.dev/problems/service-unavailable",
                "title": "Service Unavailable",
                "status": 503,
                "detail": detail,
            });
            let mut r = Response::new(Body::from(body.to_string()));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            r
        }
    };
    if let Some(v) = leader.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(LEADER_HINT, v);
    }
    r
}

async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    seen: Arc<RwLock<Seen>>,
    mut quit: watch::Receiver<bool>,
) {
    let (s1, s2, s3) = (Arc::clone(&seen), Arc::clone(&seen), seen);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok (standby)\n" }))
        .route(
            "/readyz",
            get(move || {
                let s = Arc::clone(&s1);
                async move {
                    let s = s.read();
                    let leader = s.http.as_deref().unwrap_or("unknown");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("standby; the leader is {leader}\n"),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let s = Arc::clone(&s2);
                async move {
                    let epoch = s.read().epoch;
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        role_metrics(false, Some(epoch)),
                    )
                }
            }),
        )
        // The JSON API and the dashboard live on the leader: the dashboard
        // is sent there, an API call is told where it is.
        .fallback(move |uri: axum::http::Uri| {
            let s = Arc::clone(&s3);
            async move { standby_answer(s.read().http.clone(), &uri) }
        });
    let stop = async move {
        let _ = quit.wait_for(|q| *q).await;
    };
    let addr = listener.local_addr();
    let served = match (tls, addr) {
        (Some(tls), Ok(addr)) => {
            let rx = accept_tls(listener, tls, true, || {});
            axum::serve(TlsListener { rx, addr }, app)
                .with_graceful_shutdown(stop)
                .await
        }
        _ => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = served {
        tracing::warn!(error = %e, "standby HTTP listener failed");
    }
}
