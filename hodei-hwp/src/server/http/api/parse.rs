//! Bodies and queries as the API reads them: errors naming the field.

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use tonic::Status;

use super::types::*;
use super::{ApiResult, Problem};
use super::{pipelines, schedules};

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// A JSON body, its errors naming the field (`spec.priority: invalid
/// type ...`).
pub(super) fn body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    bytes: &Bytes,
) -> ApiResult<T> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.split(';').next().unwrap_or("").trim();
            v.eq_ignore_ascii_case("application/json")
        });
    if !json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type: the body must be application/json",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            Problem::new(StatusCode::BAD_REQUEST, format!("body: {inner}"))
        } else {
            Problem::invalid(&path, inner)
        }
    })
}

/// A submission's body as `POST /api/v1/jobs` reads it, up to the spec the
/// job service would validate for a caller whose tenant is the default
/// one: what a fuzzer drives with untrusted bytes.
///
/// # Errors
///
/// The problem's detail, naming the field at fault, as the API answers it.
pub fn parse_submission(content_type: &str, bytes: &[u8]) -> Result<hodei_core::JobSpec, String> {
    let mut headers = HeaderMap::new();
    let v = HeaderValue::from_str(content_type).map_err(|e| format!("content-type: {e}"))?;
    headers.insert(header::CONTENT_TYPE, v);
    let sub: SubmitJson = body(&headers, &Bytes::copy_from_slice(bytes)).map_err(|p| p.1.detail)?;
    let wire = sub
        .spec
        .into_wire()
        .map_err(|(f, why)| format!("{f}: {why}"))?;
    crate::wire::spec_from_wire(wire, &hodei_core::TenantId::default())
        .map_err(|e| Problem::from(Status::from(e)).1.detail)
}

/// A pipeline's body as `POST /api/v1/pipelines` reads it, up to the
/// pipeline and graph the job service would accept for a caller whose
/// tenant is the default one: what a fuzzer drives with untrusted bytes.
///
/// # Errors
///
/// The problem's detail, naming the field at fault, as the API answers it.
pub fn parse_pipeline(
    content_type: &str,
    bytes: &[u8],
) -> Result<(hodei_core::PipelineSpec, hodei_core::PipelineGraph), String> {
    let mut headers = HeaderMap::new();
    let v = HeaderValue::from_str(content_type).map_err(|e| format!("content-type: {e}"))?;
    headers.insert(header::CONTENT_TYPE, v);
    let p: pipelines::PipelineJson =
        body(&headers, &Bytes::copy_from_slice(bytes)).map_err(|p| p.1.detail)?;
    let wire = p.into_wire().map_err(|(f, why)| format!("{f}: {why}"))?;
    crate::wire::pipeline_from_wire(wire, &hodei_core::TenantId::default())
        .map_err(|e| Problem::from(Status::from(e)).1.detail)
}

/// A schedule's body as `POST /api/v1/schedules` reads it, up to the
/// schedule and its cron the job service would accept for a caller whose
/// tenant is the default one.
///
/// # Errors
///
/// The problem's detail, naming the field at fault.
pub fn parse_schedule(
    content_type: &str,
    bytes: &[u8],
) -> Result<(hodei_sched::ScheduleSpec, hodei_sched::Cron), String> {
    let mut headers = HeaderMap::new();
    let v = HeaderValue::from_str(content_type).map_err(|e| format!("content-type: {e}"))?;
    headers.insert(header::CONTENT_TYPE, v);
    let s: schedules::ScheduleJson =
        body(&headers, &Bytes::copy_from_slice(bytes)).map_err(|p| p.1.detail)?;
    let wire = s.into_wire().map_err(|(f, why)| format!("{f}: {why}"))?;
    crate::wire::schedule_from_wire(wire, &hodei_core::TenantId::default())
        .map_err(|e| Problem::from(Status::from(e)).1.detail)
}

// ---- calling the services ---------------------------------------------
