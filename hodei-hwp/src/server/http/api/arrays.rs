//! Job arrays over HTTP: the JSON shapes and the handlers, each calling
//! the job service's array calls.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use hodei_store::Store;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::types::{JobSpecJson, ProblemJson};
use super::{Api, ApiResult, Caller, Problem, Problems, body};
use crate::proto;
use crate::proto::job_service_server::JobService as _;

/// An array to submit.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitArrayJson {
    /// The tasks' spec: no idempotency key, no concurrency with a limit.
    pub spec: JobSpecJson,
    /// Tasks, 1 to 200,000.
    pub count: u32,
    /// At most this many tasks hold a worker at once (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// Where an array's tasks stand.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct ArrayStatusJson {
    /// The array's id.
    pub id: String,
    /// Its tasks' name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Tasks in all.
    pub count: u32,
    /// At most this many run at once (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Waiting: not created yet, pending, queued or awaiting a retry.
    pub queued: u32,
    /// Assigned or running.
    pub running: u32,
    /// Succeeded.
    pub succeeded: u32,
    /// Failed, timed out or lost, with no attempt left.
    pub failed: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// When it was submitted, ms since the epoch.
    pub created_at_ms: u64,
}

impl From<proto::ArrayStatus> for ArrayStatusJson {
    fn from(s: proto::ArrayStatus) -> Self {
        ArrayStatusJson {
            id: s.array_id,
            name: s.name,
            tenant: s.tenant,
            count: s.count,
            concurrency: (s.concurrency > 0).then_some(s.concurrency),
            queued: s.queued,
            running: s.running,
            succeeded: s.succeeded,
            failed: s.failed,
            cancelled: s.cancelled,
            state: s.state,
            created_at_ms: s.created_at_ms,
        }
    }
}

/// Submit an array: `count` tasks of one spec, each with
/// `HODEI_ARRAY_INDEX` in its environment.
#[utoipa::path(post, path = "/api/v1/arrays", tag = "arrays",
    request_body = SubmitArrayJson,
    responses(
        (status = 201, description = "Every task stored", body = ArrayStatusJson),
        Problems, (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json"),
    ))]
pub(super) async fn submit_array<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    bytes: Bytes,
) -> ApiResult<Response> {
    let a: SubmitArrayJson = body(&caller.headers, &bytes)?;
    let spec = a
        .spec
        .into_wire()
        .map_err(|(f, why)| Problem::invalid(&f, why))?;
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .submit_array(c.req(proto::SubmitArrayRequest {
            spec: Some(spec),
            count: a.count,
            concurrency: a.concurrency.unwrap_or(0),
        })?)
        .await?
        .into_inner();
    let location = format!("/api/v1/arrays/{}", s.array_id);
    Ok(super::located(
        StatusCode::CREATED,
        &location,
        ArrayStatusJson::from(s),
    ))
}

/// Get an array's summary.
#[utoipa::path(get, path = "/api/v1/arrays/{id}", tag = "arrays",
    params(("id" = String, Path, description = "The array's id")),
    responses((status = 200, description = "The array", body = ArrayStatusJson), Problems))]
pub(super) async fn get_array<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ArrayStatusJson>> {
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .get_array(c.req(proto::GetArrayRequest { array_id: id })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}

/// Cancel every task of an array not ended yet.
#[utoipa::path(post, path = "/api/v1/arrays/{id}/cancel", tag = "arrays",
    params(("id" = String, Path, description = "The array's id")),
    responses((status = 200, description = "The array", body = ArrayStatusJson), Problems))]
pub(super) async fn cancel_array<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ArrayStatusJson>> {
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .cancel_array(c.req(proto::CancelArrayRequest { array_id: id })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}
