//! `/metrics` and `/healthz/ready` (ready once the waypoint holds a valid certificate, so a
//! node never sends it connections it cannot accept).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_core::telemetry::httpd;

use crate::Waypoint;

pub struct Monitoring {
    pub registry: Registry,
    pub wp: Arc<Waypoint>,
}

pub async fn serve(m: Arc<Monitoring>, listener: TcpListener, stop: CancellationToken) {
    let route = move |req: Request<Incoming>| route(&m, req);
    httpd::serve(listener, 32, route, stop).await;
}

fn route(m: &Monitoring, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz/ready" => {
            let valid =
                m.wp.certs
                    .snapshot()
                    .iter()
                    .any(|c| c.identity == m.wp.identity && c.state == "valid");
            if valid {
                httpd::reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                httpd::reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: no valid certificate for {} yet\n",
                        m.wp.identity
                    ),
                )
            }
        }
        "/metrics" => httpd::metrics(&m.registry),
        _ => httpd::reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
