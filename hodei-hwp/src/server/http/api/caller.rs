//! Who calls and how: the bearer token or the session cookie, the peer's
//! address, and the gRPC request every handler hands to the services.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, StatusCode, header};
use hodei_store::Store;
use tonic::Request;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::server::TcpConnectInfo;

use super::{Api, ApiResult, CSRF_HEADER, Problem, SESSION_COOKIE};
use crate::proto;
use crate::proto::job_service_server::JobService as _;
use crate::server::security::auth::Principal;

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

/// The bearer token a request carries, and whether it came from the
/// session cookie.
pub(super) fn token_of(headers: &HeaderMap) -> Option<(String, bool)> {
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
pub(super) fn request<T>(
    method: &Method,
    headers: &HeaderMap,
    peer: Peer,
    msg: T,
) -> ApiResult<Request<T>> {
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
    pub(super) method: Method,
    pub(super) headers: HeaderMap,
    pub(super) peer: Peer,
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
    pub(super) fn on<S: Store>(self, api: &Api<S>) -> Call<'_, S> {
        Call {
            api,
            method: self.method,
            headers: self.headers,
            peer: self.peer,
        }
    }
}

pub(super) struct Call<'a, S: Store> {
    pub(super) api: &'a Api<S>,
    pub(super) method: Method,
    pub(super) headers: HeaderMap,
    pub(super) peer: Peer,
}

impl<S: Store> Call<'_, S> {
    pub(super) fn req<T>(&self, msg: T) -> ApiResult<Request<T>> {
        request(&self.method, &self.headers, self.peer, msg)
    }

    pub(super) async fn principal(&self, action: &str) -> ApiResult<Principal> {
        Ok(self.api.jobs.caller(&self.req(())?, action).await?)
    }

    pub(super) async fn job(&self, id: &str) -> ApiResult<proto::Job> {
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

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
}
