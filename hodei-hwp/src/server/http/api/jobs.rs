//! Jobs: submit, list, get, cancel, attempts.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use hodei_core::JobId;
use hodei_store::Store;
use serde::Deserialize;
use tonic::Status;
use utoipa::IntoParams;

use super::types::*;
use super::{Api, ApiResult, Caller, Problem, Problems, body, located, query};
use crate::proto;
use crate::proto::job_service_server::JobService as _;

/// Submit a job.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body = SubmitJson,
    responses(
        (status = 201, description = "Accepted and stored", body = SubmittedJson),
        (status = 200, description = "An earlier submission with the same idempotency key", body = SubmittedJson),
        Problems, (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json"),
    ))]
pub(super) async fn submit<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    bytes: Bytes,
) -> ApiResult<Response> {
    let sub: SubmitJson = body(&caller.headers, &bytes)?;
    let spec = sub
        .spec
        .into_wire()
        .map_err(|(f, why)| Problem::invalid(&f, why))?;
    let c = caller.on(&api);
    let r = c
        .api
        .jobs
        .submit(c.req(proto::SubmitRequest { spec: Some(spec) })?)
        .await?
        .into_inner();
    let job: JobJson = r.job.unwrap_or_default().into();
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok(located(
        status,
        &location,
        SubmittedJson {
            job,
            created: r.created,
        },
    ))
}

/// Filters and paging of the job list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only jobs in this state (`pending`, `queued`, `assigned`,
    /// `running`, `succeeded`, `failed`, `cancelled`, `timed_out`,
    /// `lost`).
    state: Option<String>,
    /// Only this tenant's jobs (a token of several tenants must name one).
    tenant: Option<String>,
    /// Where the page starts: `next_page_token` of the page before.
    page_token: Option<String>,
    /// Jobs per page, 1 to 1000 (default 100).
    page_size: Option<u32>,
}

/// List jobs.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, description = "A page of jobs", body = JobPageJson), Problems))]
pub(super) async fn list<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    q: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<JobPageJson>> {
    let q = query(q)?;
    let state = match q.state.as_deref() {
        None | Some("") => 0,
        Some(s) => state_kind(s)
            .ok_or_else(|| Problem::invalid("state", format!("{s:?} is not a state")))?
            as i32,
    };
    let page_size = q.page_size.unwrap_or(100);
    if page_size == 0 || page_size > 1000 {
        return Err(Problem::invalid("page_size", "from 1 to 1000"));
    }
    let c = caller.on(&api);
    let r = c
        .api
        .jobs
        .list(c.req(proto::ListRequest {
            state,
            tenant: q.tenant.unwrap_or_default(),
            page_token: q.page_token.unwrap_or_default(),
            page_size,
        })?)
        .await?
        .into_inner();
    Ok(Json(JobPageJson {
        jobs: r.jobs.into_iter().map(Into::into).collect(),
        next_page_token: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
    }))
}

/// Get a job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = JobJson), Problems))]
pub(super) async fn get_job<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobJson>> {
    let c = caller.on(&api);
    Ok(Json(c.job(&id).await?.into()))
}

/// Cancel a job.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job, cancelled", body = JobJson), Problems))]
pub(super) async fn cancel<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobJson>> {
    let c = caller.on(&api);
    let j = c
        .api
        .jobs
        .cancel(c.req(proto::CancelRequest { job_id: id })?)
        .await?
        .into_inner();
    Ok(Json(j.into()))
}

/// A job's attempts.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/attempts", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "Its attempts, in order", body = AttemptsJson), Problems))]
pub(super) async fn attempts<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AttemptsJson>> {
    let c = caller.on(&api);
    // Reading the job first checks the caller may see it.
    let job = c.job(&id).await?;
    let id: JobId = job.id.parse().map_err(|e| Problem::invalid("id", e))?;
    let records = api
        .jobs
        .engine()
        .store()
        .attempts(id)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(Json(AttemptsJson {
        attempts: records
            .into_iter()
            .map(|r| AttemptJson {
                attempt: r.attempt,
                worker_id: r.worker.to_string(),
                assigned_at_ms: r.assigned_at.as_millis(),
                started_at_ms: r.started_at.map(|t| t.as_millis()),
                finished_at_ms: r.finished_at.map(|t| t.as_millis()),
                exit: r.exit.map(Into::into),
                peak_memory_mb: r.peak_memory_mb,
            })
            .collect(),
    }))
}
