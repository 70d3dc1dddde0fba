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

mod arrays;
mod pipelines;
mod schedules;
pub(crate) mod types;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt as _};
use hodei_core::JobId;
use hodei_store::{LogCursor, LogEntry, Store};
use serde::Deserialize;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Request, Status};
use utoipa::{IntoParams, OpenApi};

use crate::proto;
use crate::proto::admin_service_server::AdminService as _;
use crate::proto::job_service_server::JobService as _;
use crate::server::grpc::admin_service::AdminApi;
use crate::server::grpc::job_service::JobApi;
use crate::server::security::auth::{Principal, Role, Scope};
use types::*;

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

/// The peer's address, from either kind of listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<'a>
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'a, crate::server::http::PlainListener>,
    > for Peer
{
    fn connect_info(
        s: axum::serve::IncomingStream<'a, crate::server::http::PlainListener>,
    ) -> Self {
        Peer(Some(*s.remote_addr()))
    }
}

impl<'a>
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'a, crate::server::security::tls::TlsListener>,
    > for Peer
{
    fn connect_info(
        s: axum::serve::IncomingStream<'a, crate::server::security::tls::TlsListener>,
    ) -> Self {
        Peer(Some(*s.remote_addr()))
    }
}

// ---- errors -----------------------------------------------------------

/// An error answer: RFC 9457 problem details.
#[derive(Debug)]
pub(crate) struct Problem(StatusCode, ProblemJson);

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let field = field_of(&detail);
        let title = status.canonical_reason().unwrap_or("Error").to_string();
        let slug = title.to_ascii_lowercase().replace(' ', "-");
        Problem(
            status,
            ProblemJson {
                kind: format!("https://hodei.dev/problems/{slug}"),
                title,
                status: status.as_u16(),
                detail,
                field,
            },
        )
    }

    fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, format!("{field}: {why}"))
    }
}

/// The field a gRPC error text names first (`spec.priority: ...`).
fn field_of(detail: &str) -> Option<String> {
    let (head, _) = detail.split_once(": ")?;
    let plausible = !head.is_empty()
        && head.len() <= 128
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
    plausible.then(|| head.to_string())
}

impl From<Status> for Problem {
    fn from(s: Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, s.message())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(self.1)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hodei\""),
            );
        }
        r
    }
}

type ApiResult<T> = Result<T, Problem>;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// A JSON body, its errors naming the field (`spec.priority: invalid
/// type ...`).
fn body<T: for<'de> Deserialize<'de>>(headers: &HeaderMap, bytes: &Bytes) -> ApiResult<T> {
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

/// The bearer token a request carries, and whether it came from the
/// session cookie.
fn token_of(headers: &HeaderMap) -> Option<(String, bool)> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some((v.to_string(), false));
    }
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=')
                && k == SESSION_COOKIE
                && !val.is_empty()
            {
                return Some((format!("Bearer {val}"), true));
            }
        }
    }
    None
}

/// `msg` as a gRPC request from this HTTP caller: its credentials, its
/// address.
fn request<T>(method: &Method, headers: &HeaderMap, peer: Peer, msg: T) -> ApiResult<Request<T>> {
    let mut md = MetadataMap::new();
    if let Some((auth, from_cookie)) = token_of(headers) {
        if from_cookie
            && !matches!(*method, Method::GET | Method::HEAD)
            && !headers.contains_key(CSRF_HEADER)
        {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{CSRF_HEADER}: a change made with the session cookie must carry this header"
                ),
            ));
        }
        let v = MetadataValue::try_from(auth.as_str())
            .map_err(|_| Problem::invalid("authorization", "not a valid header value"))?;
        md.insert("authorization", v);
    }
    let mut r = Request::from_parts(md, tonic::Extensions::new(), msg);
    r.extensions_mut().insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: peer.0,
    });
    Ok(r)
}

/// Who is calling and how: what every handler hands to the services.
pub(crate) struct Caller {
    method: Method,
    headers: HeaderMap,
    peer: Peer,
}

impl<St: Send + Sync> axum::extract::FromRequestParts<St> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &St,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map_or(Peer(None), |c| c.0);
        Ok(Caller {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
            peer,
        })
    }
}

impl Caller {
    fn on<S: Store>(self, api: &Api<S>) -> Call<'_, S> {
        Call {
            api,
            method: self.method,
            headers: self.headers,
            peer: self.peer,
        }
    }
}

struct Call<'a, S: Store> {
    api: &'a Api<S>,
    method: Method,
    headers: HeaderMap,
    peer: Peer,
}

impl<S: Store> Call<'_, S> {
    fn req<T>(&self, msg: T) -> ApiResult<Request<T>> {
        request(&self.method, &self.headers, self.peer, msg)
    }

    async fn principal(&self, action: &str) -> ApiResult<Principal> {
        Ok(self.api.jobs.caller(&self.req(())?, action).await?)
    }

    async fn job(&self, id: &str) -> ApiResult<proto::Job> {
        Ok(self
            .api
            .jobs
            .get(self.req(proto::GetRequest {
                job_id: id.to_string(),
            })?)
            .await?
            .into_inner())
    }
}

// ---- handlers -----------------------------------------------------------

/// Submit a job.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body = SubmitJson,
    responses(
        (status = 201, description = "Accepted and stored", body = SubmittedJson),
        (status = 200, description = "An earlier submission with the same idempotency key", body = SubmittedJson),
        Problems, (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json"),
    ))]
async fn submit<S: Store>(
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

/// An answer naming what it made in its `Location` header.
fn located(status: StatusCode, location: &str, body: impl serde::Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Filters and paging of the job list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
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
async fn list<S: Store>(
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
async fn get_job<S: Store>(
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
async fn cancel<S: Store>(
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
async fn attempts<S: Store>(
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

/// Where to read a job's output.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// Chunks from this position on (`attempt:seq`, inclusive).
    from: Option<String>,
    /// Chunks before this position (`attempt:seq`, exclusive): loading
    /// earlier output.
    before: Option<String>,
    /// The last chunks of the output (ignored with `from` or `before`).
    tail: Option<bool>,
    /// Chunks per page, 1 to 1000 (default 200); a page also stops at
    /// 1 MiB.
    limit: Option<u32>,
}

fn parse_cursor(field: &str, s: &str) -> ApiResult<LogCursor> {
    let bad = || Problem::invalid(field, format!("{s:?} is not attempt:seq"));
    let (a, q) = s.split_once(':').ok_or_else(bad)?;
    Ok(LogCursor {
        attempt: a.parse().map_err(|_| bad())?,
        seq: q.parse().map_err(|_| bad())?,
    })
}

fn cursor_text(c: LogCursor) -> String {
    format!("{}:{}", c.attempt, c.seq)
}

fn key(c: LogCursor) -> u128 {
    (u128::from(c.attempt) << 64) | u128::from(c.seq)
}

fn unkey(k: u128) -> LogCursor {
    LogCursor {
        attempt: (k >> 64) as u32,
        seq: k as u64,
    }
}

fn stream_name(s: hodei_core::LogStream) -> &'static str {
    match s {
        hodei_core::LogStream::Stdout => "stdout",
        hodei_core::LogStream::Stderr => "stderr",
        hodei_core::LogStream::System => "system",
    }
}

fn chunk_json(e: LogEntry) -> LogChunkJson {
    LogChunkJson {
        attempt: e.cursor.attempt,
        seq: e.cursor.seq,
        stream: stream_name(e.chunk.stream).into(),
        at_ms: e.chunk.at.as_millis(),
        text: String::from_utf8_lossy(&e.chunk.data).into_owned(),
    }
}

/// How many of `entries`, taken in order, fit in one page's bytes (at
/// least one).
fn fitting<'a>(entries: impl Iterator<Item = &'a LogEntry>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for e in entries {
        bytes += e.chunk.data.len();
        if bytes > MAX_LOG_PAGE_BYTES && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// The last stored position before `bound`, found by bisection over
/// forward reads (each finds the first chunk at or after a position), so
/// a long log opens at its end without being read from the start.
async fn last_before<S: Store>(store: &S, job: JobId, bound: u128) -> ApiResult<Option<u128>> {
    // Past the last (attempt, seq) there is nothing; beyond it a key
    // would not survive the trip through a cursor.
    let bound = bound.min(1 << 96);
    let first_at = |k: u128| async move {
        let page = store
            .read_logs(job, unkey(k), 1)
            .await
            .map_err(|e| Problem::from(Status::internal(e.to_string())))?;
        Ok::<_, Problem>(
            page.entries
                .first()
                .map(|e| key(e.cursor))
                .filter(|&f| f < bound),
        )
    };
    let Some(mut lo) = first_at(0).await? else {
        return Ok(None);
    };
    // `lo` exists and is below `bound`; nothing exists in [hi, bound).
    let mut hi = bound;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match first_at(mid).await? {
            Some(found) => lo = found,
            None => hi = mid,
        }
    }
    Ok(Some(lo))
}

/// Read a job's output: from a position on, before a position, or its
/// tail.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), LogParams),
    responses((status = 200, description = "A page of output", body = LogPageJson), Problems))]
async fn logs<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<LogParams>, QueryRejection>,
) -> ApiResult<Json<LogPageJson>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(200) as usize;
    if limit == 0 || limit > MAX_LOG_PAGE {
        return Err(Problem::invalid(
            "limit",
            format!("from 1 to {MAX_LOG_PAGE}"),
        ));
    }
    let from = q
        .from
        .as_deref()
        .map(|s| parse_cursor("from", s))
        .transpose()?;
    let before = q
        .before
        .as_deref()
        .map(|s| parse_cursor("before", s))
        .transpose()?;
    let c = caller.on(&api);
    let job = c.job(&id).await?;
    let id: JobId = job.id.parse().map_err(|e| Problem::invalid("id", e))?;
    let store = api.jobs.engine().store();
    let read = |from: LogCursor, n: usize| async move {
        store
            .read_logs(id, from, n)
            .await
            .map_err(|e| Problem::from(Status::internal(e.to_string())))
    };
    let backwards = before.is_some() || (from.is_none() && q.tail.unwrap_or(false));
    let (mut entries, truncated) = if backwards {
        let bound = before.map_or(u128::MAX, key);
        match last_before(&**store, id, bound).await? {
            None => (
                Vec::new(),
                read(LogCursor::default(), 1).await?.truncated_bytes,
            ),
            Some(last) => {
                let last = unkey(last);
                let start = LogCursor {
                    attempt: last.attempt,
                    seq: last.seq.saturating_sub(limit as u64 - 1),
                };
                let page = read(start, limit).await?;
                let mut es: Vec<LogEntry> = page
                    .entries
                    .into_iter()
                    .filter(|e| key(e.cursor) < bound)
                    .collect();
                // The newest chunks win when the page is too large.
                let fit = fitting(es.iter().rev());
                es.drain(..es.len() - fit);
                (es, page.truncated_bytes)
            }
        }
    } else {
        let page = read(from.unwrap_or_default(), limit).await?;
        let mut es = page.entries;
        es.truncate(fitting(es.iter()));
        (es, page.truncated_bytes)
    };
    let next = match entries.last() {
        Some(e) => LogCursor {
            attempt: e.cursor.attempt,
            seq: e.cursor.seq + 1,
        },
        None if backwards => before.unwrap_or_default(),
        None => from.unwrap_or_default(),
    };
    // Something earlier exists unless this page starts at the very first
    // chunk.
    let previous = match entries.first() {
        Some(e) => {
            let first = read(LogCursor::default(), 1).await?;
            let at_start = first.entries.first().is_none_or(|f| f.cursor == e.cursor);
            (!at_start).then(|| cursor_text(e.cursor))
        }
        None => None,
    };
    Ok(Json(LogPageJson {
        chunks: entries.drain(..).map(chunk_json).collect(),
        next: cursor_text(next),
        previous,
        truncated_bytes: truncated,
    }))
}

/// Where a followed log starts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FollowParams {
    /// From this position (`attempt:seq`, inclusive); `Last-Event-ID`
    /// (the last chunk seen) takes precedence.
    from: Option<String>,
}

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn problem_event(s: Status) -> Event {
    let p = Problem::from(s);
    Event::default()
        .event("error")
        .json_data(&p.1)
        .unwrap_or_else(|_| Event::default().event("error"))
}

fn sse<St>(stream: St) -> Response
where
    St: Stream<Item = Event> + Send + 'static,
{
    let mut r = Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must not hold events back.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Follow a job's output as Server-Sent Events: `log` events (data: a
/// chunk, id: `attempt:seq`) until the job ends and its output is
/// complete (`end`), or `error` (problem details).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs/stream", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), FollowParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this chunk (`attempt:seq`)")),
    responses((status = 200, description = "An event stream of chunks", body = String, content_type = "text/event-stream"), Problems))]
async fn follow_logs<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<FollowParams>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let from = match last_event_id(&caller.headers) {
        Some(last) => {
            let c = parse_cursor("Last-Event-ID", last)?;
            LogCursor {
                attempt: c.attempt,
                seq: c.seq + 1,
            }
        }
        None => q
            .from
            .as_deref()
            .map(|s| parse_cursor("from", s))
            .transpose()?
            .unwrap_or_default(),
    };
    let c = caller.on(&api);
    let chunks = c
        .api
        .jobs
        .logs(c.req(proto::LogsRequest {
            job_id: id,
            from_attempt: from.attempt,
            from_seq: from.seq,
            follow: true,
        })?)
        .await?
        .into_inner();
    let events = chunks
        .map(|r| match r {
            Ok(ch) => {
                let j = LogChunkJson {
                    attempt: ch.attempt,
                    seq: ch.seq,
                    stream: match proto::LogStream::try_from(ch.stream) {
                        Ok(proto::LogStream::Stderr) => "stderr",
                        Ok(proto::LogStream::System) => "system",
                        _ => "stdout",
                    }
                    .into(),
                    at_ms: ch.at_ms,
                    text: String::from_utf8_lossy(&ch.data).into_owned(),
                };
                Event::default()
                    .event("log")
                    .id(format!("{}:{}", ch.attempt, ch.seq))
                    .json_data(&j)
                    .unwrap_or_else(|_| Event::default().event("log"))
            }
            Err(s) => problem_event(s),
        })
        .chain(futures::stream::once(async {
            Event::default().event("end").data("")
        }));
    Ok(sse(events))
}

/// What to watch.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WatchParams {
    /// Only this job's changes; the stream ends once it is final.
    job_id: Option<String>,
    /// With `job_id`: send its current state first.
    include_current: Option<bool>,
}

/// Watch jobs change state, as Server-Sent Events: `job` events (data: the
/// change, id: its place on the bus; reconnect with `Last-Event-ID` to
/// resume after it), `error` (problem details; `410`-like data loss
/// when the watcher fell too far behind).
#[utoipa::path(get, path = "/api/v1/events", tag = "jobs", params(WatchParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses((status = 200, description = "An event stream of state changes", body = String, content_type = "text/event-stream"), Problems))]
async fn watch<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    q: Result<Query<WatchParams>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let from_seq = match last_event_id(&caller.headers) {
        Some(last) => Some(
            last.parse::<u64>().map_err(|_| {
                Problem::invalid("Last-Event-ID", format!("{last:?} is not an event id"))
            })? + 1,
        ),
        None => None,
    };
    let c = caller.on(&api);
    let changes = c
        .api
        .jobs
        .watch(c.req(proto::WatchRequest {
            job_id: q.job_id.unwrap_or_default(),
            include_current: q.include_current.unwrap_or(false),
            from_seq,
        })?)
        .await?
        .into_inner();
    let events = changes.map(|r| match r {
        Ok(e) => {
            let seq = e.seq;
            let current = e.seq == 0 && e.from == e.to;
            let j: JobEventJson = e.into();
            let ev = Event::default().event("job");
            // The current state sent first is no place on the bus.
            let ev = if current { ev } else { ev.id(seq.to_string()) };
            ev.json_data(&j)
                .unwrap_or_else(|_| Event::default().event("job"))
        }
        Err(s) => problem_event(s),
    });
    Ok(sse(events))
}

/// Filters and paging of the worker list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WorkerParams {
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
async fn workers<S: Store>(
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
async fn drain<S: Store>(
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
async fn revoke_worker<S: Store>(
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

fn whoami_of(p: &Principal) -> WhoamiJson {
    let tenants = match &p.scope {
        Scope::All => None,
        Scope::Tenants(ts) => Some(ts.iter().map(ToString::to_string).collect()),
    };
    WhoamiJson {
        name: p.name.clone(),
        role: p.role.as_str().into(),
        tenants,
        may_submit: matches!(p.role, Role::Admin | Role::Submitter),
        may_cancel: p.role != Role::Viewer,
        may_drain: p.may_drain(),
        is_admin: p.is_admin(),
    }
}

/// Who the caller is and what it may do.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "session",
    responses((status = 200, description = "The caller", body = WhoamiJson), Problems))]
async fn whoami<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
) -> ApiResult<Json<WhoamiJson>> {
    let c = caller.on(&api);
    Ok(Json(whoami_of(&c.principal("read").await?)))
}

/// Sign in to the dashboard: the token is checked and kept in an
/// `HttpOnly`, `SameSite=Strict` cookie, out of reach of scripts.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = SessionJson,
    responses((status = 200, description = "Signed in; the cookie is set", body = WhoamiJson), Problems,
        (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json")))]
async fn sign_in<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    bytes: Bytes,
) -> ApiResult<Response> {
    let s: SessionJson = body(&caller.headers, &bytes)?;
    let token = s.token.trim();
    if token.is_empty() || token.len() > 8192 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::invalid(
            "token",
            "a token is printable ASCII without spaces",
        ));
    }
    let mut h = HeaderMap::new();
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Problem::invalid("token", "not a valid header value"))?;
    h.insert(header::AUTHORIZATION, bearer);
    let c = Caller {
        method: Method::GET,
        headers: h,
        peer: caller.peer,
    }
    .on(&api);
    let who = whoami_of(&c.principal("sign_in").await?);
    let secure = if api.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut r = Json(who).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Sign out: the cookie is cleared.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204, description = "Signed out")))]
async fn sign_out<S: Store>(State(api): State<Arc<Api<S>>>) -> Response {
    let secure = if api.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let want = (q * total as f64).ceil() as u64;
    for (le, cumulative) in buckets {
        if *cumulative >= want {
            return if le.is_finite() { *le } else { f64::MAX };
        }
    }
    0.0
}

/// The scheduler at a glance: queues, dispatch shares, workers, jobs,
/// latency. Tenants the caller may not see are left out.
#[utoipa::path(get, path = "/api/v1/overview", tag = "jobs",
    responses((status = 200, description = "The overview", body = OverviewJson), Problems))]
async fn overview<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
) -> ApiResult<Json<OverviewJson>> {
    let c = caller.on(&api);
    let p = c.principal("read").await?;
    let engine = api.jobs.engine();
    let snap = engine
        .snapshot()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let metrics = engine.metrics();
    let queue_depths = snap
        .queue_depths
        .iter()
        .filter(|(t, _, _)| p.may_access(t))
        .map(|(t, pr, n)| QueueDepthJson {
            tenant: t.to_string(),
            priority: u32::from(*pr),
            depth: *n as u64,
        })
        .collect();
    let dispatch = metrics
        .tenants()
        .into_iter()
        .filter(|(t, _)| p.may_access(t))
        .map(|(t, c)| TenantDispatchJson {
            tenant: t.to_string(),
            weight: c.weight.unwrap_or(1),
            dispatched: c.dispatched,
        })
        .collect();
    let (ready, draining, lost) = engine.cluster().counts();
    let workers = BTreeMap::from([
        ("ready".to_string(), ready as u64),
        ("draining".to_string(), draining as u64),
        ("lost".to_string(), lost as u64),
    ]);
    let jobs = p.is_admin().then(|| {
        metrics
            .jobs_by_state()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect()
    });
    let (buckets, count, sum) = metrics.submit_to_start.cumulative();
    let submit_to_start = LatencyJson {
        count,
        mean_s: if count > 0 { sum / count as f64 } else { 0.0 },
        p50_s: quantile(&buckets, count, 0.5),
        p90_s: quantile(&buckets, count, 0.9),
        p99_s: quantile(&buckets, count, 0.99),
    };
    Ok(Json(OverviewJson {
        queue_depths,
        dispatch,
        workers,
        jobs,
        submit_to_start,
        now_ms: hodei_core::Clock::now(&hodei_core::SystemClock).as_millis(),
    }))
}

/// 201 with a body holding a token shown once: no cache may keep it.
fn secret_made<T: serde::Serialize>(made: T) -> Response {
    let mut resp = (StatusCode::CREATED, Json(made)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// List client tokens (admins).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "admin",
    responses((status = 200, description = "The tokens", body = TokensJson), Problems))]
async fn tokens<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
) -> ApiResult<Json<TokensJson>> {
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .list_tokens(c.req(proto::ListTokensRequest {})?)
        .await?
        .into_inner();
    Ok(Json(TokensJson {
        tokens: r.tokens.into_iter().map(Into::into).collect(),
    }))
}

/// Make a client token (admins); the token is shown once.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "admin", request_body = CreateTokenJson,
    responses((status = 201, description = "Made", body = CreatedTokenJson), Problems,
        (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json")))]
async fn create_token<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    bytes: Bytes,
) -> ApiResult<Response> {
    let t: CreateTokenJson = body(&caller.headers, &bytes)?;
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .create_token(c.req(proto::CreateTokenRequest {
            role: t.role,
            tenants: t.tenants,
            name: t.name,
            ttl_seconds: t.ttl_seconds,
        })?)
        .await?
        .into_inner();
    Ok(secret_made(CreatedTokenJson {
        info: r.info.unwrap_or_default().into(),
        token: r.token,
    }))
}

/// Revoke a client token (admins).
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, description = "Revoked", body = TokenInfoJson), Problems))]
async fn revoke_token<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfoJson>> {
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .revoke_token(c.req(proto::RevokeTokenRequest { id })?)
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// List join tokens (admins).
#[utoipa::path(get, path = "/api/v1/join-tokens", tag = "admin",
    responses((status = 200, description = "The join tokens", body = JoinTokensJson), Problems))]
async fn join_tokens<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
) -> ApiResult<Json<JoinTokensJson>> {
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .list_join_tokens(c.req(proto::ListJoinTokensRequest {})?)
        .await?
        .into_inner();
    Ok(Json(JoinTokensJson {
        tokens: r.tokens.into_iter().map(Into::into).collect(),
    }))
}

/// Make a join token for agents (admins); the token is shown once.
#[utoipa::path(post, path = "/api/v1/join-tokens", tag = "admin", request_body = CreateJoinTokenJson,
    responses((status = 201, description = "Made", body = CreatedJoinTokenJson), Problems,
        (status = 415, description = "Not JSON", body = ProblemJson, content_type = "application/problem+json")))]
async fn create_join_token<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    bytes: Bytes,
) -> ApiResult<Response> {
    let t: CreateJoinTokenJson = body(&caller.headers, &bytes)?;
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .create_join_token(c.req(proto::CreateJoinTokenRequest {
            ttl_seconds: t.ttl_seconds,
            rotate: t.rotate,
        })?)
        .await?
        .into_inner();
    Ok(secret_made(CreatedJoinTokenJson {
        info: r.info.unwrap_or_default().into(),
        token: r.token,
    }))
}

/// Revoke a join token (admins).
#[utoipa::path(post, path = "/api/v1/join-tokens/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "The join token's id")),
    responses((status = 200, description = "Revoked", body = JoinTokenInfoJson), Problems))]
async fn revoke_join_token<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JoinTokenInfoJson>> {
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .revoke_join_token(c.req(proto::RevokeJoinTokenRequest { id })?)
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Which audit records.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// From this record on.
    from_index: Option<u64>,
    /// From the first record at or after this time, ms since the epoch.
    since_ms: Option<u64>,
    /// Records per page, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// Read the audit trail (admins).
#[utoipa::path(get, path = "/api/v1/audit", tag = "admin", params(AuditParams),
    responses((status = 200, description = "A page of records", body = AuditPageJson), Problems))]
async fn audit<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<Json<AuditPageJson>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(Problem::invalid("limit", "from 1 to 1000"));
    }
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .list_audit(c.req(proto::ListAuditRequest {
            from_index: q.from_index.unwrap_or(0),
            since_ms: q.since_ms.unwrap_or(0),
            limit,
        })?)
        .await?
        .into_inner();
    Ok(Json(AuditPageJson {
        records: r.records.into_iter().map(Into::into).collect(),
        next_index: r.next_index,
    }))
}

/// Check the audit chain (admins).
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "admin",
    responses((status = 200, description = "The check", body = AuditCheckJson), Problems))]
async fn verify_audit<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
) -> ApiResult<Json<AuditCheckJson>> {
    let c = caller.on(&api);
    let r = c
        .api
        .admin
        .verify_audit(c.req(proto::VerifyAuditRequest {})?)
        .await?
        .into_inner();
    Ok(Json(AuditCheckJson {
        intact: r.intact,
        records: r.records,
        broken_at: r.broken_at,
        reason: r.reason,
    }))
}

/// The errors any call may answer with, as problem details.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Problems {
    /// The request is malformed; `field` names what is wrong.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(#[to_schema] ProblemJson),
    /// No valid token.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(#[to_schema] ProblemJson),
    /// The token's role or tenants do not allow this.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(#[to_schema] ProblemJson),
    /// No such job, worker or token (or another tenant's).
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(#[to_schema] ProblemJson),
    /// The object is not in a state that allows this (a finished job).
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(#[to_schema] ProblemJson),
    /// Over the caller's request rate or stream count.
    #[response(status = 429, content_type = "application/problem+json")]
    TooMany(#[to_schema] ProblemJson),
    /// The server is stopping, or is a standby.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(#[to_schema] ProblemJson),
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI description of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Hodei HTTP/JSON API", description = "Jobs, workers, tokens and the audit trail of a Hodei server. Every call takes `Authorization: Bearer <token>` (or the dashboard's session cookie); errors are RFC 9457 problem details naming the field at fault."),
    paths(submit, list, get_job, cancel, attempts, logs, follow_logs, watch, workers, drain,
        revoke_worker, whoami, sign_in, sign_out, overview, tokens, create_token, revoke_token,
        join_tokens, create_join_token, revoke_join_token, audit, verify_audit,
        pipelines::submit_pipeline, pipelines::get_pipeline, pipelines::list_pipelines,
        pipelines::cancel_pipeline, arrays::submit_array, arrays::get_array,
        arrays::cancel_array, schedules::create_schedule, schedules::list_schedules,
        schedules::get_schedule, schedules::pause_schedule, schedules::resume_schedule,
        schedules::delete_schedule),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "jobs"), (name = "pipelines"), (name = "arrays"), (name = "schedules"), (name = "workers"), (name = "admin"), (name = "session")),
)]
pub(crate) struct ApiDoc;

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "path: no such API route")
}

/// The API's routes, under `/api/v1`.
pub(crate) fn router<S: Store>(api: Arc<Api<S>>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/jobs", post(submit::<S>).get(list::<S>))
        .route("/api/v1/jobs/{id}", get(get_job::<S>))
        .route("/api/v1/jobs/{id}/cancel", post(cancel::<S>))
        .route("/api/v1/jobs/{id}/attempts", get(attempts::<S>))
        .route("/api/v1/jobs/{id}/logs", get(logs::<S>))
        .route("/api/v1/jobs/{id}/logs/stream", get(follow_logs::<S>))
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
        .route("/api/v1/events", get(watch::<S>))
        .route("/api/v1/workers", get(workers::<S>))
        .route("/api/v1/workers/{id}/drain", post(drain::<S>))
        .route("/api/v1/workers/{id}/revoke", post(revoke_worker::<S>))
        .route("/api/v1/whoami", get(whoami::<S>))
        .route("/api/v1/session", post(sign_in::<S>).delete(sign_out::<S>))
        .route("/api/v1/overview", get(overview::<S>))
        .route("/api/v1/tokens", get(tokens::<S>).post(create_token::<S>))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token::<S>))
        .route(
            "/api/v1/join-tokens",
            get(join_tokens::<S>).post(create_join_token::<S>),
        )
        .route(
            "/api/v1/join-tokens/{id}/revoke",
            post(revoke_join_token::<S>),
        )
        .route("/api/v1/audit", get(audit::<S>))
        .route("/api/v1/audit/verify", get(verify_audit::<S>))
        .route("/api/v1/{*rest}", axum::routing::any(not_found))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_named_only_when_the_text_starts_with_one() {
        assert_eq!(
            field_of("spec.priority: at most 63").as_deref(),
            Some("spec.priority")
        );
        assert_eq!(
            field_of("spec.secrets[0].value: too short").as_deref(),
            Some("spec.secrets[0].value")
        );
        assert_eq!(field_of("job 123 not found"), None);
        assert_eq!(field_of("the server is shutting down: bye"), None);
    }

    #[test]
    fn cursors_order_as_the_store_does() {
        let a = LogCursor {
            attempt: 1,
            seq: u64::MAX,
        };
        let b = LogCursor { attempt: 2, seq: 0 };
        assert!(key(a) < key(b));
        assert_eq!(unkey(key(a)), a);
        assert_eq!(
            parse_cursor("from", "2:17").unwrap(),
            LogCursor {
                attempt: 2,
                seq: 17
            }
        );
        assert!(parse_cursor("from", "2-17").is_err());
        assert!(parse_cursor("from", "x:1").is_err());
    }

    #[test]
    fn the_session_cookie_is_read_and_a_header_wins() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; hodei_session=tok123"),
        );
        assert_eq!(token_of(&h), Some(("Bearer tok123".into(), true)));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(token_of(&h), Some(("Bearer x".into(), false)));
    }

    #[test]
    fn a_change_by_cookie_needs_the_csrf_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("hodei_session=tok"),
        );
        let p = Peer(None);
        assert!(request(&Method::GET, &h, p, ()).is_ok());
        let e = request(&Method::POST, &h, p, ()).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
        h.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(request(&Method::POST, &h, p, ()).is_ok());
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let b = vec![(0.1, 50), (1.0, 90), (10.0, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 100, 0.5), 0.1);
        assert_eq!(quantile(&b, 100, 0.9), 1.0);
        assert_eq!(quantile(&b, 100, 0.99), 10.0);
        assert_eq!(quantile(&b, 0, 0.5), 0.0);
    }

    #[test]
    fn the_document_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/jobs",
            "/api/v1/jobs/{id}/logs/stream",
            "/api/v1/events",
            "/api/v1/audit/verify",
            "/api/v1/pipelines",
            "/api/v1/pipelines/{id}/cancel",
            "/api/v1/arrays",
            "/api/v1/arrays/{id}",
            "/api/v1/schedules",
            "/api/v1/schedules/{id}/resume",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }
}
