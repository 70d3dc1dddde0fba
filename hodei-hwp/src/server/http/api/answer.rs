//! How the API answers: errors as RFC 9457 problem details (naming the
//! field a service's error names), and what it made with its `Location`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

use super::types::*;

/// An error answer: RFC 9457 problem details.
#[derive(Debug)]
pub(crate) struct Problem(pub(super) StatusCode, pub(super) ProblemJson);

impl Problem {
    pub(super) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
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

    pub(super) fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, format!("{field}: {why}"))
    }
}

/// The field a gRPC error text names first (`spec.priority: ...`).
pub(super) fn field_of(detail: &str) -> Option<String> {
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

pub(super) type ApiResult<T> = Result<T, Problem>;

/// An answer naming what it made in its `Location` header.
pub(super) fn located(status: StatusCode, location: &str, body: impl serde::Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
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
}
