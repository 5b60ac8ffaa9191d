//! `/metrics` and `/healthz/ready` (ready once the waypoint holds a valid certificate, so a
//! node never sends it connections it cannot accept), and on the loopback admin port
//! `/config_dump`: the mesh as the waypoint sees it, and its routes and traffic policies as
//! it compiled them.

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

pub async fn serve_admin(wp: Arc<Waypoint>, listener: TcpListener, stop: CancellationToken) {
    let route = move |req: Request<Incoming>| admin(&wp, req);
    httpd::serve(listener, 8, route, stop).await;
}

fn admin(wp: &Waypoint, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/config_dump" => {
            let state = wp.state.current();
            let routes = wp.routes.borrow().clone();
            let traffic = wp.traffic.borrow().clone();
            let (h1, h2) = wp.clients.counts();
            let dump = serde_json::json!({
                "waypoint": {"name": wp.name, "identity": wp.identity.to_string()},
                "routes": routes.dump(),
                "traffic": traffic.dump(),
                "upstreamConnections": {"http1": h1, "http2": h2},
                "mesh": state.dump(),
            });
            match serde_json::to_string_pretty(&dump) {
                Ok(text) => httpd::reply(StatusCode::OK, "application/json", text),
                Err(e) => httpd::reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        _ => httpd::reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
