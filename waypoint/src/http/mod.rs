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
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;
use tower::{Layer, ServiceBuilder};
use weft_core::hbone::StreamIo;
use weft_core::identity::SpiffeId;
use weft_core::model::MeshState;

use crate::Waypoint;
use crate::routes::RouteTable;
use crate::traffic::TrafficTable;
use body::Body;

pub use client::Clients;

/// A response on its way. Requests never fail: failures are responses.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Every layer's service. Cloning it is one reference count, and a layer with nothing to do
/// for a request hands back the next layer's future as its own ([`layer_fn`]): a request pays
/// for the layers that act on it, not for every layer in the stack.
#[derive(Clone)]
pub struct HttpService(Arc<dyn Fn(Request<Body>) -> ResponseFuture + Send + Sync>);

impl HttpService {
    pub fn new(f: impl Fn(Request<Body>) -> ResponseFuture + Send + Sync + 'static) -> Self {
        HttpService(Arc::new(f))
    }

    pub fn call(&self, req: Request<Body>) -> ResponseFuture {
        (self.0)(req)
    }
}

impl tower::Service<Request<Body>> for HttpService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Map<
        ResponseFuture,
        fn(Response<Body>) -> Result<Response<Body>, Infallible>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use futures_util::FutureExt;
        HttpService::call(self, req).map(Ok)
    }
}

/// The CONNECT stream a request arrived in (a request extension).
#[derive(Debug)]
pub struct Downstream {
    /// The client's identity, from the node's HBONE certificate (the client workload's own).
    pub source: SpiffeId,
    /// `source` as text, made once per tunnel stream (policy and metrics read it per request).
    pub source_principal: String,
    /// The original client's address.
    pub client: SocketAddr,
    /// The client's workload (its `workload_name`, `namespace`), when the address is one.
    pub source_workload: Option<(String, String)>,
    /// Shared: every request without a route names the Service as its backend.
    pub service_namespace: Arc<str>,
    pub service_name: Arc<str>,
    pub service_hostname: String,
    /// The service VIP and port the client connected to.
    pub vip: SocketAddr,
    /// The request-metric series the stream's requests were recorded to.
    pub series: telemetry::SeriesCache,
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
fn tunnel_of(req: &Request<Body>) -> Option<(&Arc<Downstream>, &Snapshot)> {
    Some((
        req.extensions().get::<Arc<Downstream>>()?,
        req.extensions().get::<Snapshot>()?,
    ))
}

/// A response the layer has at hand (its own answer), as the future layers return.
fn ready(response: Response<Body>) -> ResponseFuture {
    Box::pin(std::future::ready(response))
}

/// A layer from a function of (next service, request) to the response's future. A layer
/// that acts on the request boxes its own future (`Box::pin(async move { .. })`); one that
/// has nothing to do returns `next.call(req)` and costs no allocation.
fn layer_fn<F>(f: F) -> impl Layer<HttpService, Service = HttpService> + Clone
where
    F: Fn(&HttpService, Request<Body>) -> ResponseFuture + Clone + Send + Sync + 'static,
{
    tower::layer::layer_fn(move |next: HttpService| {
        let f = f.clone();
        HttpService::new(move |req| f(&next, req))
    })
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
            let response = stack.call(req);
            async move { Ok::<_, Infallible>(response.await) }
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
