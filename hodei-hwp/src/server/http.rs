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

use super::engine::EngineHandle;

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
