//! The OpenAPI document, generated from the handlers and types.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::types::*;
use super::{admin, arrays, jobs, logs, overview, pipelines, schedules, session, workers};

/// The errors any call may answer with, as problem details.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum Problems {
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

pub(super) struct BearerAuth;

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
    paths(jobs::submit, jobs::list, jobs::get_job, jobs::cancel, jobs::attempts, logs::logs,
        logs::follow_logs, logs::watch, workers::workers, workers::drain, workers::revoke_worker,
        session::whoami, session::sign_in, session::sign_out, overview::overview, admin::tokens,
        admin::create_token, admin::revoke_token, admin::join_tokens, admin::create_join_token,
        admin::revoke_join_token, admin::audit, admin::verify_audit,
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

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
