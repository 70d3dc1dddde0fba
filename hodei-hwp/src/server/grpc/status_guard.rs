//! A layer over every gRPC response the server sends: error messages stay
//! small enough for any client, and a request over the size limit is
//! reported as RESOURCE_EXHAUSTED naming the limit.
//!
//! Standard gRPC clients refuse response metadata over 8 or 16 KiB and then
//! report RESOURCE_EXHAUSTED of their own instead of the real error; tonic
//! reports an oversized request as OUT_OF_RANGE. A status travels in the
//! response headers (a trailers-only response) or in the trailers; this
//! layer looks at both. Messages are also bounded where they are made (the
//! spec's problems list); this is the backstop for every other path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Response};

/// The longest `grpc-message` sent, in bytes of its encoded form.
pub const MAX_STATUS_MESSAGE: usize = 7 * 1024;

const OVERSIZE: &str = "decoded message length too large";

/// Wraps the server's services in [`StatusGuard`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StatusGuardLayer;

impl<S> tower::Layer<S> for StatusGuardLayer {
    type Service = StatusGuard<S>;

    fn layer(&self, inner: S) -> StatusGuard<S> {
        StatusGuard { inner }
    }
}

/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct StatusGuard<S> {
    inner: S,
}

impl<S, Req, B> tower::Service<Req> for StatusGuard<S>
where
    S: tower::Service<Req, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<GuardBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            guard(resp.headers_mut());
            Ok(resp.map(|inner| GuardBody {
                inner: Box::pin(inner),
            }))
        })
    }
}

/// A response body whose trailers pass through the same guard.
pub struct GuardBody<B> {
    inner: Pin<Box<B>>,
}

impl<B> std::fmt::Debug for GuardBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardBody").finish_non_exhaustive()
    }
}

impl<B: http_body::Body> http_body::Body for GuardBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    guard(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Rewrites an oversized-request status and bounds the message.
fn guard(headers: &mut http::HeaderMap) {
    let Some(message) = headers.get("grpc-message").map(|m| m.as_bytes().to_vec()) else {
        return;
    };
    let status = headers.get("grpc-status").map(|s| s.as_bytes().to_vec());
    // grpc-message is percent-encoded.
    let text = percent_encoding::percent_decode(&message).decode_utf8_lossy();
    if status.as_deref() == Some(b"11") && text.contains(OVERSIZE) {
        let numbers: Vec<&str> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .collect();
        let (found, limit) = match numbers.as_slice() {
            [found, limit, ..] => (*found, *limit),
            _ => ("?", "?"),
        };
        let msg = format!(
            "request too large: {found} bytes, over the limit of {limit} bytes per message"
        );
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        if let Ok(v) = HeaderValue::from_str(&msg) {
            headers.insert("grpc-message", v);
        }
        return;
    }
    if message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE;
        // Never split a %XX escape.
        for back in 1..=2 {
            if message.get(cut - back) == Some(&b'%') {
                cut -= back;
                break;
            }
        }
        let mut short = message[..cut].to_vec();
        short.extend_from_slice(b" ... (truncated)");
        if let Ok(v) = HeaderValue::from_bytes(&short) {
            headers.insert("grpc-message", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_short_and_never_inside_an_escape() {
        for pad in 0..3 {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static("3"));
            let long = format!("{}{}", "x".repeat(pad), "%C3%A4".repeat(5000));
            h.insert("grpc-message", HeaderValue::from_str(&long).unwrap());
            guard(&mut h);
            let m = h["grpc-message"].to_str().unwrap();
            assert!(m.len() < 8 * 1024, "{}", m.len());
            let body = m.trim_end_matches(" ... (truncated)");
            // Whole escapes only.
            let tail = &body[body.rfind('%').unwrap()..];
            assert_eq!(tail.len(), 3, "{tail}");
        }
    }

    #[test]
    fn an_oversized_request_is_resource_exhausted_naming_the_limit() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%205000000%20bytes,%20the%20limit%20is:%204194304%20bytes",
            ),
        );
        guard(&mut h);
        assert_eq!(h["grpc-status"], "8");
        let m = h["grpc-message"].to_str().unwrap();
        assert!(m.contains("5000000") && m.contains("4194304"), "{m}");
    }

    #[test]
    fn other_statuses_pass_unchanged() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("attempt out of range"),
        );
        guard(&mut h);
        assert_eq!(h["grpc-status"], "11");
        assert_eq!(h["grpc-message"], "attempt out of range");
    }
}
