//! L7: HTTP/1.1, HTTP/2 and gRPC served inside the CONNECT stream a node opened to the
//! waypoint, each request through one `tower` layer per behaviour:
//!
//! ```text
//! telemetry -> context -> authz -> route -> limit -> fault -> filters
//!     -> request timeout -> retry -> attempt timeout -> circuit -> backend
//! ```
//!
//! - `telemetry`: request metrics and the access log, when the response has ended.
//! - `context`: path normalisation, hop-by-hop headers, `x-forwarded-for`, request id, trace.
//! - `authz`: L7 AuthorizationPolicy attached to the Service or the waypoint.
//! - `route`: the Gateway API rule the request takes.
//! - `limit`: the Service's local rate limits (traffic policy).
//! - `fault`: the Service's injected delays and aborts (traffic policy).
//! - `filters`: the rule's filters, a weighted backend, mirrors.
//! - `timeout`: `timeouts.request` around the whole, `timeouts.backendRequest` per attempt.
//! - `retry`: the rule's retry policy, within a budget, only with a replayable body.
//! - `circuit`: the backend Service's `maxRequests`.
//! - `backend`: an endpoint of the backend Service by its balancer, over a pooled HTTP
//!   connection in HBONE; each answer feeds the endpoint's cost and outlier detection.

mod authz;
mod backend;
pub mod body;
mod circuit;
mod client;
mod context;
pub mod exchange;
mod fault;
mod filters;
mod limit;
mod retry;
mod route;
mod telemetry;
mod timeout;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder};
use weft_core::hbone::StreamIo;
use weft_core::identity::SpiffeId;
use weft_core::model::MeshState;

use crate::Waypoint;
use crate::routes::RouteTable;
use crate::traffic::TrafficTable;
use body::Body;

pub use client::Clients;

/// Every layer's service: requests in, responses out; failures are responses.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The CONNECT stream a request arrived in (a request extension).
#[derive(Debug)]
pub struct Downstream {
    /// The client's identity, from the node's HBONE certificate (the client workload's own).
    pub source: SpiffeId,
    /// `source` as text, made once per tunnel stream (policy and metrics read it per request).
    pub source_principal: String,
    /// The original client's address.
    pub client: SocketAddr,
    /// The client workload (`name`, `namespace`), when the address is one.
    pub source_workload: Option<(String, String)>,
    pub service_namespace: String,
    pub service_name: String,
    pub service_hostname: String,
    /// The service VIP and port the client connected to.
    pub vip: SocketAddr,
}

/// The mesh version and routes one request is handled with, taken once when it arrives so
/// that every layer sees the same (a request extension).
#[derive(Clone)]
pub struct Snapshot {
    pub state: Arc<MeshState>,
    pub routes: Arc<RouteTable>,
    pub traffic: Arc<TrafficTable>,
}

/// The tunnel and mesh version a request belongs to, which `serve` attaches to every request
/// (a request made elsewhere has none, and is answered 500 by the layer that needs them).
fn tunnel_of(req: &Request<Body>) -> Option<(Arc<Downstream>, Snapshot)> {
    Some((
        req.extensions().get::<Arc<Downstream>>()?.clone(),
        req.extensions().get::<Snapshot>()?.clone(),
    ))
}

/// A layer from an async function of (next service, request).
fn layer_fn<F, Fut>(f: F) -> impl Layer<HttpService, Service = HttpService> + Clone
where
    F: Fn(HttpService, Request<Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    tower::layer::layer_fn(move |inner: HttpService| {
        let f = f.clone();
        BoxCloneSyncService::new(tower::service_fn(move |req| {
            let fut = f(inner.clone(), req);
            async move { Ok::<_, Infallible>(fut.await) }
        }))
    })
}

/// Calls the next service; it cannot fail (failures are responses). `call` on the boxed
/// service, not `oneshot`: the boxed future is one concrete type, which keeps the futures of
/// the layers above `Send` without higher-ranked lifetime trouble.
async fn next(mut inner: HttpService, req: Request<Body>) -> Response<Body> {
    use tower::Service;
    let fut = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
        Ok(()) => inner.call(req),
        Err(never) => match never {},
    };
    match fut.await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// The layers, built once per waypoint; requests clone the result.
pub fn stack(wp: Arc<Waypoint>) -> HttpService {
    let backend = backend::service(wp.clone());
    ServiceBuilder::new()
        .layer(telemetry::layer(wp.clone()))
        .layer(context::layer(wp.clone()))
        .layer(authz::layer(wp.clone()))
        .layer(route::layer())
        .layer(limit::layer())
        .layer(fault::layer())
        .layer(filters::layer(backend.clone()))
        .layer(timeout::request_layer())
        .layer(retry::layer())
        .layer(timeout::attempt_layer())
        .layer(circuit::layer())
        .service(backend)
}

/// Limits of the HTTP server, against clients that send too much or too often.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may open and reset before the server reads them (CVE-2023-44487, "rapid
/// reset"): beyond this the connection is closed.
const MAX_PENDING_RESETS: usize = 32;
/// Streams the server may reset for a client's protocol errors before closing it.
const MAX_LOCAL_RESETS: usize = 256;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP in one CONNECT stream until the client is done or the waypoint stops.
pub async fn serve(
    wp: Arc<Waypoint>,
    io: StreamIo,
    down: Arc<Downstream>,
    shutdown: CancellationToken,
) {
    let Some(stack) = wp.http.get().cloned() else {
        tracing::error!("HTTP layers not built; refusing the connection");
        return;
    };
    let svc = {
        let wp = wp.clone();
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(body::incoming);
            req.extensions_mut().insert(down.clone());
            req.extensions_mut().insert(Snapshot {
                state: wp.state.current(),
                routes: wp.routes.borrow().clone(),
                traffic: wp.traffic.borrow().clone(),
            });
            let stack = stack.clone();
            async move { Ok::<_, Infallible>(next(stack, req).await) }
        })
    };
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_RESETS);
    let conn = b.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!("HTTP connection ended: {e}");
    }
}
