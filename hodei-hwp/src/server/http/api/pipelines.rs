//! Pipelines over HTTP: the JSON shapes and the handlers, each calling
//! the job service's pipeline calls.

use std::collections::BTreeMap;
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

/// When a step runs, given how its dependencies ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConditionJson {
    /// Every dependency succeeded.
    #[default]
    OnSuccess,
    /// Every dependency ended and at least one failed.
    OnFailure,
    /// Every dependency ended, however.
    Always,
}

/// One step: a job and when it runs.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepJson {
    /// Unique in the pipeline: 1 to 63 of `A-Za-z0-9_-`.
    pub name: String,
    /// What it runs (its tenant is the pipeline's).
    pub job: JobSpecJson,
    /// Steps that must end first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// When it runs.
    #[serde(default)]
    pub condition: ConditionJson,
    /// The compensation to run if it succeeded and the pipeline failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
}

/// A job that undoes a step.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompensationJson {
    /// Unique among steps and compensations.
    pub name: String,
    /// What it runs.
    pub job: JobSpecJson,
}

/// A pipeline to submit.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineJson {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The tenant; a single-tenant token's own when empty.
    #[serde(default)]
    pub tenant: String,
    /// Let independent branches go on after a step failed (the default
    /// cancels the running steps and starts no more `on_success` ones).
    #[serde(default)]
    pub continue_on_failure: bool,
    /// The steps.
    pub steps: Vec<StepJson>,
    /// Compensations the steps name.
    #[serde(default)]
    pub compensations: Vec<CompensationJson>,
}

impl PipelineJson {
    pub(crate) fn into_wire(self) -> Result<proto::PipelineSpec, (String, String)> {
        let job = |j: JobSpecJson, at: String| {
            j.into_wire().map_err(|(f, why)| {
                let rest = f.strip_prefix("spec.").unwrap_or(&f);
                (format!("{at}.{rest}"), why)
            })
        };
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.into_iter().enumerate() {
            steps.push(proto::PipelineStep {
                name: s.name,
                job: Some(job(s.job, format!("steps[{i}].job"))?),
                depends_on: s.depends_on,
                condition: match s.condition {
                    ConditionJson::OnSuccess => proto::StepCondition::OnSuccess,
                    ConditionJson::OnFailure => proto::StepCondition::OnFailure,
                    ConditionJson::Always => proto::StepCondition::Always,
                } as i32,
                compensate: s.compensate.unwrap_or_default(),
            });
        }
        let mut compensations = Vec::with_capacity(self.compensations.len());
        for (i, c) in self.compensations.into_iter().enumerate() {
            compensations.push(proto::PipelineCompensation {
                name: c.name,
                job: Some(job(c.job, format!("compensations[{i}].job"))?),
            });
        }
        Ok(proto::PipelineSpec {
            name: self.name,
            tenant: self.tenant,
            continue_on_failure: self.continue_on_failure,
            steps,
            compensations,
        })
    }
}

/// One step's state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct StepStatusJson {
    /// The step.
    pub name: String,
    /// `waiting`, `running`, `succeeded`, `failed`, `cancelled` or
    /// `skipped`.
    pub state: String,
    /// Its job, once created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Steps it depends on.
    pub depends_on: Vec<String>,
    /// When it runs.
    pub condition: String,
    /// What it published, once it succeeded (masked).
    pub outputs: BTreeMap<String, String>,
    /// Why its job could not be created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The compensation it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
}

/// A compensation that ran (or runs).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct CompensationRunJson {
    /// The step it undoes.
    pub step: String,
    /// The compensation.
    pub compensation: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Its job, once created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// A pipeline's state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct PipelineStatusJson {
    /// The pipeline's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// `running`, `compensating`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Whether independent branches go on after a failure.
    pub continue_on_failure: bool,
    /// When it was submitted, ms since the epoch.
    pub created_at_ms: u64,
    /// How many steps it has.
    pub step_count: u64,
    /// Steps by state.
    pub counts: BTreeMap<String, u64>,
    /// Each step, in the order submitted (empty with `summary`).
    pub steps: Vec<StepStatusJson>,
    /// Compensations in the order they ran.
    pub compensations: Vec<CompensationRunJson>,
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<proto::PipelineStatus> for PipelineStatusJson {
    fn from(s: proto::PipelineStatus) -> Self {
        PipelineStatusJson {
            id: s.pipeline_id,
            name: s.name,
            tenant: s.tenant,
            state: s.state,
            continue_on_failure: s.continue_on_failure,
            created_at_ms: s.created_at_ms,
            step_count: s.step_count,
            counts: s.counts.into_iter().collect(),
            steps: s
                .steps
                .into_iter()
                .map(|t| StepStatusJson {
                    name: t.name,
                    state: t.state,
                    job_id: some(t.job_id),
                    depends_on: t.depends_on,
                    condition: t.condition,
                    outputs: t.outputs.into_iter().collect(),
                    error: some(t.error),
                    compensate: some(t.compensate),
                })
                .collect(),
            compensations: s
                .compensations
                .into_iter()
                .map(|c| CompensationRunJson {
                    step: c.step,
                    compensation: c.compensation,
                    state: c.state,
                    job_id: some(c.job_id),
                })
                .collect(),
        }
    }
}

/// Pipelines, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct PipelineListJson {
    /// Each without its steps.
    pub pipelines: Vec<PipelineStatusJson>,
}

/// Submit a pipeline.
#[utoipa::path(post, path = "/api/v1/pipelines", tag = "pipelines",
    request_body = PipelineJson,
    responses(
        (status = 201, description = "Stored; its first steps started", body = PipelineStatusJson),
        Problems, (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json"),
    ))]
pub(super) async fn submit_pipeline<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    bytes: Bytes,
) -> ApiResult<Response> {
    let p: PipelineJson = body(&caller.headers, &bytes)?;
    let wire = p
        .into_wire()
        .map_err(|(f, why)| Problem::invalid(&f, why))?;
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .submit_pipeline(c.req(proto::SubmitPipelineRequest {
            pipeline: Some(wire),
        })?)
        .await?
        .into_inner();
    let location = format!("/api/v1/pipelines/{}", s.pipeline_id);
    Ok(super::located(
        StatusCode::CREATED,
        &location,
        PipelineStatusJson::from(s),
    ))
}

/// How much of a pipeline to show.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PipelineParams {
    /// Counts by state only, without the steps.
    summary: Option<bool>,
}

/// Get a pipeline.
#[utoipa::path(get, path = "/api/v1/pipelines/{id}", tag = "pipelines",
    params(("id" = String, Path, description = "The pipeline's id"), PipelineParams),
    responses((status = 200, description = "The pipeline", body = PipelineStatusJson), Problems))]
pub(super) async fn get_pipeline<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<PipelineParams>, QueryRejection>,
) -> ApiResult<Json<PipelineStatusJson>> {
    let q = query(q)?;
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .get_pipeline(c.req(proto::GetPipelineRequest {
            pipeline_id: id,
            summary: q.summary.unwrap_or(false),
        })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}

/// Which pipelines to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PipelineListParams {
    /// Only this tenant's.
    tenant: Option<String>,
}

/// List pipelines.
#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", params(PipelineListParams),
    responses((status = 200, description = "Pipelines, newest first", body = PipelineListJson), Problems))]
pub(super) async fn list_pipelines<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    q: Result<Query<PipelineListParams>, QueryRejection>,
) -> ApiResult<Json<PipelineListJson>> {
    let q = query(q)?;
    let c = caller.on(&api);
    let r = c
        .api
        .jobs
        .list_pipelines(c.req(proto::ListPipelinesRequest {
            tenant: q.tenant.unwrap_or_default(),
        })?)
        .await?
        .into_inner();
    Ok(Json(PipelineListJson {
        pipelines: r.pipelines.into_iter().map(Into::into).collect(),
    }))
}

/// Cancel a pipeline: its running steps are cancelled, the rest skipped.
#[utoipa::path(post, path = "/api/v1/pipelines/{id}/cancel", tag = "pipelines",
    params(("id" = String, Path, description = "The pipeline's id")),
    responses((status = 200, description = "The pipeline, cancelling", body = PipelineStatusJson), Problems))]
pub(super) async fn cancel_pipeline<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PipelineStatusJson>> {
    let c = caller.on(&api);
    let s = c
        .api
        .jobs
        .cancel_pipeline(c.req(proto::CancelPipelineRequest { pipeline_id: id })?)
        .await?
        .into_inner();
    Ok(Json(s.into()))
}
