//! The HTTP/JSON API under `/api/v1`, on the server's HTTP listener.
//!
//! Every call goes through the same in-process service the gRPC API
//! serves ([`JobApi`], [`AdminApi`]): the same validation and field-named
//! errors, the same tokens and roles, the same request limits and audit
//! trail. Only the shapes differ: JSON in and out, errors as RFC 9457
//! problem details, and Watch and Logs as Server-Sent Events resumable
//! with `Last-Event-ID`.
//!
//! A caller is identified by `Authorization: Bearer <token>`, or by the
//! dashboard's session cookie (`HttpOnly`, `SameSite=Strict`, so neither
//! scripts nor other sites can read or send it); a call that changes
//! something on the strength of the cookie must also carry the
//! `X-Hodei-Csrf` header, which no cross-site form can set.

mod admin;
mod answer;
mod arrays;
mod caller;
mod jobs;
mod logs;
mod openapi;
mod overview;
mod parse;
mod pipelines;
mod schedules;
mod session;
pub(crate) mod types;
mod workers;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{get, post};
use hodei_store::Store;

use self::answer::{ApiResult, Problem, located};
pub(crate) use self::caller::{Caller, Peer};
pub use self::openapi::openapi_json;
use self::openapi::{Problems, openapi};
use self::parse::{body, query};
pub use self::parse::{parse_pipeline, parse_schedule, parse_submission};
use crate::server::grpc::admin_service::AdminApi;
use crate::server::grpc::job_service::JobApi;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "hodei_session";
/// The header a cookie-authenticated change must carry.
pub(crate) const CSRF_HEADER: &str = "x-hodei-csrf";
/// Chunks in one page of log history, at most.
const MAX_LOG_PAGE: usize = 1000;
/// Bytes in one page of log history, at most (at least one chunk is
/// always returned).
const MAX_LOG_PAGE_BYTES: usize = 1024 * 1024;
/// Workers in one page, at most.
const MAX_WORKER_PAGE: usize = 1000;

/// What the API's handlers share.
pub(crate) struct Api<S: Store> {
    pub(crate) jobs: Arc<JobApi<S>>,
    pub(crate) admin: Arc<AdminApi<S>>,
    /// Session cookies carry `Secure` (the listener serves TLS).
    pub(crate) secure_cookies: bool,
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "path: no such API route")
}

/// The API's routes, under `/api/v1`.
pub(crate) fn router<S: Store>(api: Arc<Api<S>>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/jobs", post(jobs::submit::<S>).get(jobs::list::<S>))
        .route("/api/v1/jobs/{id}", get(jobs::get_job::<S>))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel::<S>))
        .route("/api/v1/jobs/{id}/attempts", get(jobs::attempts::<S>))
        .route("/api/v1/jobs/{id}/logs", get(logs::logs::<S>))
        .route("/api/v1/jobs/{id}/logs/stream", get(logs::follow_logs::<S>))
        .route(
            "/api/v1/pipelines",
            post(pipelines::submit_pipeline::<S>).get(pipelines::list_pipelines::<S>),
        )
        .route("/api/v1/pipelines/{id}", get(pipelines::get_pipeline::<S>))
        .route(
            "/api/v1/pipelines/{id}/cancel",
            post(pipelines::cancel_pipeline::<S>),
        )
        .route("/api/v1/arrays", post(arrays::submit_array::<S>))
        .route("/api/v1/arrays/{id}", get(arrays::get_array::<S>))
        .route(
            "/api/v1/arrays/{id}/cancel",
            post(arrays::cancel_array::<S>),
        )
        .route(
            "/api/v1/schedules",
            post(schedules::create_schedule::<S>).get(schedules::list_schedules::<S>),
        )
        .route(
            "/api/v1/schedules/{id}",
            get(schedules::get_schedule::<S>).delete(schedules::delete_schedule::<S>),
        )
        .route(
            "/api/v1/schedules/{id}/pause",
            post(schedules::pause_schedule::<S>),
        )
        .route(
            "/api/v1/schedules/{id}/resume",
            post(schedules::resume_schedule::<S>),
        )
        .route("/api/v1/events", get(logs::watch::<S>))
        .route("/api/v1/workers", get(workers::workers::<S>))
        .route("/api/v1/workers/{id}/drain", post(workers::drain::<S>))
        .route(
            "/api/v1/workers/{id}/revoke",
            post(workers::revoke_worker::<S>),
        )
        .route("/api/v1/whoami", get(session::whoami::<S>))
        .route(
            "/api/v1/session",
            post(session::sign_in::<S>).delete(session::sign_out::<S>),
        )
        .route("/api/v1/overview", get(overview::overview::<S>))
        .route(
            "/api/v1/tokens",
            get(admin::tokens::<S>).post(admin::create_token::<S>),
        )
        .route("/api/v1/tokens/{id}/revoke", post(admin::revoke_token::<S>))
        .route(
            "/api/v1/join-tokens",
            get(admin::join_tokens::<S>).post(admin::create_join_token::<S>),
        )
        .route(
            "/api/v1/join-tokens/{id}/revoke",
            post(admin::revoke_join_token::<S>),
        )
        .route("/api/v1/audit", get(admin::audit::<S>))
        .route("/api/v1/audit/verify", get(admin::verify_audit::<S>))
        .route("/api/v1/{*rest}", axum::routing::any(not_found))
        .with_state(api)
}
