//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the
//! process answers), `/readyz` (the engine answers and the server is not
//! stopping).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hodei_store::{Store, WriteStats};

use crate::server::engine::EngineHandle;

/// The plain-TCP HTTP listener: `TCP_NODELAY` on every connection (an
/// answer must not wait on delayed acknowledgements), the peer's address
/// kept for the audit trail.
pub(crate) struct PlainListener(pub(crate) tokio::net::TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (s, a);
                }
                // Out of descriptors and the like: wait, as axum's own
                // listener does, rather than spin.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Reads a store's group-commit counters, where it has them.
pub type StatsOf<S> = fn(&S) -> Option<&WriteStats>;

/// What the endpoints read.
pub(crate) struct Http<S> {
    pub(crate) engine: EngineHandle<S>,
    pub(crate) stats: StatsOf<S>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub(crate) stopping: AtomicBool,
    /// The leadership epoch, for a server on a shared database.
    pub(crate) epoch: Option<i64>,
    /// The served certificate, whose expiry is exported.
    pub(crate) tls: Option<Arc<crate::server::security::tls::ServerTls>>,
}

/// The certificate's expiry as a metric, for alerting before it lapses.
fn certificate_metrics(not_after: i64) -> String {
    format!(
        "# HELP hodei_tls_certificate_expiry_timestamp_seconds When the served TLS certificate expires, seconds since the epoch.\n\
         # TYPE hodei_tls_certificate_expiry_timestamp_seconds gauge\n\
         hodei_tls_certificate_expiry_timestamp_seconds {not_after}\n"
    )
}

/// The role lines of `/metrics`: this server leads (a server on its own
/// store always does); standbys print 0.
pub(crate) fn role_metrics(leader: bool, epoch: Option<i64>) -> String {
    let mut s = String::from(
        "# HELP hodei_server_leader Whether this server leads (runs the engine): 1, or 0 for a standby.\n\
         # TYPE hodei_server_leader gauge\n",
    );
    s.push_str(&format!("hodei_server_leader {}\n", u8::from(leader)));
    if let Some(e) = epoch {
        s.push_str(
            "# HELP hodei_server_epoch The leadership epoch of the shared database this server last saw or held.\n\
             # TYPE hodei_server_epoch gauge\n",
        );
        s.push_str(&format!("hodei_server_epoch {e}\n"));
    }
    s
}

async fn metrics<S: Store>(State(h): State<Arc<Http<S>>>) -> impl IntoResponse {
    match h.engine.snapshot().await {
        Ok(snap) => {
            let mut text =
                h.engine
                    .metrics()
                    .render(&snap, h.engine.cluster(), (h.stats)(h.engine.store()));
            text.push_str(&role_metrics(true, h.epoch));
            if let Some(t) = h.tls.as_ref().and_then(|t| t.certificate_not_after()) {
                text.push_str(&certificate_metrics(t));
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                text,
            )
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<S: Store>(State(h): State<Arc<Http<S>>>) -> impl IntoResponse {
    if h.stopping.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    }
    match h.engine.snapshot().await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "engine stopped\n"),
    }
}

pub(crate) fn router<S: Store>(state: Arc<Http<S>>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .with_state(state)
}
