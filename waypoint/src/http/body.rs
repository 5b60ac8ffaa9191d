//! The one body type every layer passes on, and the answers the waypoint makes itself.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies, streamed; boxed so that layers need not name body types.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(BoxError::from).boxed()
}

/// gRPC requests (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// gRPC status codes the waypoint answers with.
#[derive(Debug, Clone, Copy)]
pub enum GrpcStatus {
    PermissionDenied = 7,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DeadlineExceeded = 4,
    InvalidArgument = 3,
}

/// The gRPC status that stands for an HTTP error the waypoint itself makes (the mapping
/// gRPC's own spec gives for HTTP to gRPC).
fn grpc_for(status: StatusCode) -> GrpcStatus {
    match status.as_u16() {
        400 => GrpcStatus::InvalidArgument,
        403 => GrpcStatus::PermissionDenied,
        404 => GrpcStatus::Unimplemented,
        504 => GrpcStatus::DeadlineExceeded,
        429 | 502..=503 => GrpcStatus::Unavailable,
        _ => GrpcStatus::Internal,
    }
}

/// An answer from the waypoint itself: `status` with a one-line text body, or for a gRPC
/// request a trailers-only gRPC error (HTTP 200 with `grpc-status`), which is what gRPC
/// clients understand.
pub fn answer(grpc: bool, status: StatusCode, message: &str) -> Response<Body> {
    if grpc {
        return grpc_answer(grpc_for(status) as u32, message);
    }
    let mut r = Response::new(full(format!("{message}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A trailers-only gRPC answer with status `code`.
pub fn grpc_answer(code: u32, message: &str) -> Response<Body> {
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// `b`, holding `guard` until the body has ended or is dropped: what a request holds (a
/// circuit breaker's slot, a connection) lasts as long as its response streams.
pub fn guarded<G: Send + Sync + Unpin + 'static>(b: Body, guard: G) -> Body {
    Guarded {
        inner: b,
        guard: Some(guard),
    }
    .boxed()
}

struct Guarded<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `grpc-message` is percent-encoded (the gRPC HTTP/2 spec).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
