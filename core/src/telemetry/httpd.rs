//! The small HTTP/1.1 server behind every component's admin, metrics and readiness ports. They
//! are reachable from the network, so connections are capped and bounded in time: a slow or
//! idle client must not hold sockets the data path needs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connections one port serves at once, and how long one may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `route` on `listener` until `stop`, at most `max_connections` at once (more are
/// closed on accept).
pub async fn serve<F>(
    listener: TcpListener,
    max_connections: usize,
    route: F,
    stop: CancellationToken,
) where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let Some((tcp, _)) = crate::listener::next(&listener, &stop).await else {
            return;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: dropping the socket closes it
        };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let route = route.clone();
                async move { Ok::<_, Infallible>(route(req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

/// A response with `body` and its content type.
pub fn reply(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// `/metrics`: the registry in the OpenMetrics text format.
pub fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}
