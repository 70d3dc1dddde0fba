//! Periodic jobs over HTTP: the JSON shapes and the handlers, each calling
//! the job service's schedule calls.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use hodei_store::Store;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::types::{JobSpecJson, ProblemJson};
use super::{Api, ApiResult, Caller, Problem, Problems, body, query};
use crate::proto;
use crate::proto::job_service_server::JobService as _;

/// What a tick does while an earlier run has not ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OverlapJson {
    /// Start another run anyway.
    #[default]
    Allow,
    /// Skip the tick.
    Skip,
    /// Cancel the runs not ended, then start.
    CancelPrevious,
}

impl OverlapJson {
    fn from_wire(v: i32) -> Self {
        match proto::Overlap::try_from(v) {
            Ok(proto::Overlap::Skip) => OverlapJson::Skip,
            Ok(proto::Overlap::CancelPrevious) => OverlapJson::CancelPrevious,
            _ => OverlapJson::Allow,
        }
    }
}

/// A schedule to create.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleJson {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The tenant; a single-tenant token's own when empty.
    #[serde(default)]
    pub tenant: String,
    /// Five fields, or six with seconds first.
    pub cron: String,
    /// An IANA time zone (default UTC).
    #[serde(default)]
    pub timezone: String,
    /// What a tick does while an earlier run has not ended.
    #[serde(default)]
    pub overlap: OverlapJson,
    /// After downtime, how many missed ticks run (the latest; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<u32>,
    /// Created paused.
    #[serde(default)]
    pub paused: bool,
    /// The job each tick runs (no idempotency key).
    pub job: JobSpecJson,
}

impl ScheduleJson {
    /// The gRPC message, for the one validation both APIs share.
    pub(crate) fn into_wire(self) -> Result<proto::ScheduleSpec, (String, String)> {
        let job = self.job.into_wire().map_err(|(f, why)| {
            let rest = f.strip_prefix("spec.").unwrap_or(&f).to_string();
            (format!("job.{rest}"), why)
        })?;
        Ok(proto::ScheduleSpec {
            name: self.name,
            tenant: self.tenant,
            cron: self.cron,
            timezone: self.timezone,
            overlap: match self.overlap {
                OverlapJson::Allow => proto::Overlap::Allow,
                OverlapJson::Skip => proto::Overlap::Skip,
                OverlapJson::CancelPrevious => proto::Overlap::CancelPrevious,
            } as i32,
            catch_up: self.catch_up,
            paused: self.paused,
            job: Some(job),
        })
    }
}

/// A run of a schedule.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleRunJson {
    /// Its tick, ms since the epoch.
    pub tick_ms: u64,
    /// Its job.
    pub job_id: String,
}

/// A schedule's state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleStatusJson {
    /// The schedule's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its pattern.
    pub cron: String,
    /// The pattern in words.
    pub description: String,
    /// Its time zone.
    pub timezone: String,
    /// Its overlap policy.
    pub overlap: OverlapJson,
    /// Missed ticks run after downtime.
    pub catch_up: u32,
    /// Paused: no tick runs.
    pub paused: bool,
    /// When it was created, ms since the epoch.
    pub created_at_ms: u64,
    /// The last tick run or skipped, ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tick_ms: Option<u64>,
    /// The next ticks (none while paused).
    pub next_runs_ms: Vec<u64>,
    /// The latest runs, newest last.
    pub recent_runs: Vec<ScheduleRunJson>,
    /// Ticks not run (skipped by overlap, or missed beyond the catch-up).
    pub skipped: u64,
    /// It was deleted by this call.
    pub deleted: bool,
}

impl From<proto::ScheduleStatus> for ScheduleStatusJson {
    fn from(s: proto::ScheduleStatus) -> Self {
        ScheduleStatusJson {
            id: s.schedule_id,
            name: s.name,
            tenant: s.tenant,
            cron: s.cron,
            description: s.description,
            timezone: s.timezone,
            overlap: OverlapJson::from_wire(s.overlap),
            catch_up: s.catch_up,
            paused: s.paused,
            created_at_ms: s.created_at_ms,
            last_tick_ms: (s.last_tick_ms > 0).then_some(s.last_tick_ms),
            next_runs_ms: s.next_runs_ms,
            recent_runs: s
                .recent_runs
                .into_iter()
                .map(|r| ScheduleRunJson {
                    tick_ms: r.tick_ms,
                    job_id: r.job_id,
                })
                .collect(),
            skipped: s.skipped,
            deleted: s.deleted,
        }
    }
}

/// Schedules, oldest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleListJson {
    /// The schedules.
    pub schedules: Vec<ScheduleStatusJson>,
}

/// Create a schedule.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules",
    request_body = ScheduleJson,
    responses(
        (status = 201, description = "Stored; its ticks run from now on", body = ScheduleStatusJson),
        Problems, (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json"),
    ))]
pub(super) async fn create_schedule<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    bytes: Bytes,
) -> ApiResult<Response> {
    let s: ScheduleJson = body(&caller.headers, &bytes)?;
    let wire = s
        .into_wire()
        .map_err(|(f, why)| Problem::invalid(&f, why))?;
    let c = caller.on(&api);
    let st = c
        .api
        .jobs
        .create_schedule(c.req(proto::CreateScheduleRequest {
            schedule: Some(wire),
        })?)
        .await?
        .into_inner();
    let location = format!("/api/v1/schedules/{}", st.schedule_id);
    Ok(super::located(
        StatusCode::CREATED,
        &location,
        ScheduleStatusJson::from(st),
    ))
}

/// Which schedules to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ScheduleListParams {
    /// Only this tenant's.
    tenant: Option<String>,
}

/// List schedules.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(ScheduleListParams),
    responses((status = 200, description = "Schedules, oldest first", body = ScheduleListJson), Problems))]
pub(super) async fn list_schedules<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    q: Result<Query<ScheduleListParams>, QueryRejection>,
) -> ApiResult<Json<ScheduleListJson>> {
    let q = query(q)?;
    let c = caller.on(&api);
    let r = c
        .api
        .jobs
        .list_schedules(c.req(proto::ListSchedulesRequest {
            tenant: q.tenant.unwrap_or_default(),
        })?)
        .await?
        .into_inner();
    Ok(Json(ScheduleListJson {
        schedules: r.schedules.into_iter().map(Into::into).collect(),
    }))
}

/// Get a schedule: its next ticks and latest runs.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule", body = ScheduleStatusJson), Problems))]
pub(super) async fn get_schedule<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleStatusJson>> {
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .get_schedule(c.req(proto::ScheduleRequest { schedule_id: id })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}

/// Pause a schedule.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/pause", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule, paused", body = ScheduleStatusJson), Problems))]
pub(super) async fn pause_schedule<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleStatusJson>> {
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .pause_schedule(c.req(proto::ScheduleRequest { schedule_id: id })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}

/// Resume a schedule from now (ticks that fell while paused do not run).
#[utoipa::path(post, path = "/api/v1/schedules/{id}/resume", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule, running", body = ScheduleStatusJson), Problems))]
pub(super) async fn resume_schedule<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleStatusJson>> {
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .resume_schedule(c.req(proto::ScheduleRequest { schedule_id: id })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}

/// Delete a schedule (its runs stay, as jobs).
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule as it was", body = ScheduleStatusJson), Problems))]
pub(super) async fn delete_schedule<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleStatusJson>> {
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .delete_schedule(c.req(proto::ScheduleRequest { schedule_id: id })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}
