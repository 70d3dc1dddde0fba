//! Who the caller is, and the dashboard's sign-in and sign-out.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hodei_store::Store;

use super::types::*;
use super::{Api, ApiResult, Caller, Problem, Problems, SESSION_COOKIE, body};
use crate::server::security::auth::{Principal, Role, Scope};

pub(super) fn whoami_of(p: &Principal) -> WhoamiJson {
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
pub(super) async fn whoami<S: Store>(
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
pub(super) async fn sign_in<S: Store>(
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
pub(super) async fn sign_out<S: Store>(State(api): State<Arc<Api<S>>>) -> Response {
    let secure = if api.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
