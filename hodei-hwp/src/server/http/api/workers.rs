//! Workers: list, drain, revoke.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use hodei_store::Store;
use serde::Deserialize;
use utoipa::IntoParams;

use super::types::*;
use super::{Api, ApiResult, Caller, MAX_WORKER_PAGE, Problem, Problems, query};
use crate::proto;
use crate::proto::admin_service_server::AdminService as _;
use crate::proto::job_service_server::JobService as _;

/// Filters and paging of the worker list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WorkerParams {
    /// Only workers in this state (`ready`, `draining`, `lost`).
    status: Option<String>,
    /// Where the page starts: `next_page_token` of the page before.
    page_token: Option<String>,
    /// Workers per page, 1 to 1000 (default 100).
    page_size: Option<u32>,
}

/// List workers.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", params(WorkerParams),
    responses((status = 200, description = "A page of workers", body = WorkerPageJson), Problems))]
pub(super) async fn workers<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    q: Result<Query<WorkerParams>, QueryRejection>,
) -> ApiResult<Json<WorkerPageJson>> {
    let q = query(q)?;
    let size = q.page_size.unwrap_or(100) as usize;
    if size == 0 || size > MAX_WORKER_PAGE {
        return Err(Problem::invalid(
            "page_size",
            format!("from 1 to {MAX_WORKER_PAGE}"),
        ));
    }
    if let Some(s) = q.status.as_deref()
        && !matches!(s, "" | "ready" | "draining" | "lost")
    {
        return Err(Problem::invalid(
            "status",
            format!("{s:?} is not ready, draining or lost"),
        ));
    }
    let c = caller.on(&api);
    let all = c
        .api
        .jobs
        .list_workers(c.req(proto::ListWorkersRequest {})?)
        .await?
        .into_inner()
        .workers;
    let mut matching: Vec<proto::Worker> = all
        .into_iter()
        .filter(|w| {
            q.status
                .as_deref()
                .is_none_or(|s| s.is_empty() || w.status == s)
        })
        .collect();
    matching.sort_by(|a, b| a.id.cmp(&b.id));
    let total = matching.len() as u64;
    let start = match q.page_token.as_deref().filter(|t| !t.is_empty()) {
        Some(after) => matching.partition_point(|w| w.id.as_str() <= after),
        None => 0,
    };
    let page: Vec<WorkerJson> = matching.drain(start..).take(size).map(Into::into).collect();
    let next = (start + page.len() < total as usize)
        .then(|| page.last().map(|w| w.id.clone()))
        .flatten();
    Ok(Json(WorkerPageJson {
        workers: page,
        total,
        next_page_token: next,
    }))
}

/// Drain a worker: it takes no new jobs and leaves once its jobs end.
#[utoipa::path(post, path = "/api/v1/workers/{id}/drain", tag = "workers",
    params(("id" = String, Path, description = "The worker's id")),
    responses((status = 200, description = "The worker, draining", body = WorkerJson), Problems))]
pub(super) async fn drain<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerJson>> {
    let c = caller.on(&api);
    let w = c
        .api
        .jobs
        .drain_worker(c.req(proto::DrainWorkerRequest { worker_id: id })?)
        .await?
        .into_inner();
    Ok(Json(w.into()))
}

/// Revoke a worker's certificate and close its connection (admins).
#[utoipa::path(post, path = "/api/v1/workers/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "The worker's id")),
    responses((status = 200, description = "Revoked", body = RevokedWorkerJson), Problems))]
pub(super) async fn revoke_worker<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RevokedWorkerJson>> {
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .revoke_worker(c.req(proto::RevokeWorkerRequest { worker_id: id })?)
        .await?
        .into_inner();
    Ok(Json(RevokedWorkerJson {
        worker_id: r.worker_id,
        disconnected: r.disconnected,
    }))
}
