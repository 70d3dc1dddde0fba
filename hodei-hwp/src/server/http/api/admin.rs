//! Client tokens, join tokens and the audit trail (admins).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hodei_store::Store;
use serde::Deserialize;
use utoipa::IntoParams;

use super::types::*;
use super::{Api, ApiResult, Caller, Problem, Problems, body, query};
use crate::proto;
use crate::proto::admin_service_server::AdminService as _;

/// 201 with a body holding a token shown once: no cache may keep it.
pub(super) fn secret_made<T: serde::Serialize>(made: T) -> Response {
    let mut resp = (StatusCode::CREATED, Json(made)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// List client tokens (admins).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "admin",
    responses((status = 200, description = "The tokens", body = TokensJson), Problems))]
pub(super) async fn tokens<S: Store>(
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
pub(super) async fn create_token<S: Store>(
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
pub(super) async fn revoke_token<S: Store>(
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
pub(super) async fn join_tokens<S: Store>(
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
pub(super) async fn create_join_token<S: Store>(
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
pub(super) async fn revoke_join_token<S: Store>(
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
pub(super) struct AuditParams {
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
pub(super) async fn audit<S: Store>(
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
pub(super) async fn verify_audit<S: Store>(
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
