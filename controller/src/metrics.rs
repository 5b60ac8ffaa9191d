//! The controller's metrics and its monitoring port (`/metrics`, `/healthz/ready`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_core::telemetry::httpd;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// `issued` or `refused`.
    result: &'static str,
    /// Why it was refused; empty when issued.
    reason: &'static str,
}

/// `weft_certificate_requests_total{result, reason}`.
#[derive(Clone)]
pub struct IssueMetrics {
    requests: Family<RequestLabels, Counter>,
}

impl IssueMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "weft_certificate_requests",
            "Certificate requests answered, by result and refusal reason",
            requests.clone(),
        );
        Self { requests }
    }

    pub fn issued(&self) {
        self.requests
            .get_or_create(&RequestLabels {
                result: "issued",
                reason: "",
            })
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                result: "refused",
                reason,
            })
            .inc();
    }
}

/// `weft_waypoint_reconcile_errors_total`: reconciles of a waypoint Gateway, of the
/// waypoints' access binding or of route status that failed (each is logged and retried).
pub fn register_reconcile_errors(registry: &mut Registry) -> Counter {
    let errors = Counter::default();
    registry.register(
        "weft_waypoint_reconcile_errors",
        "Reconciles of waypoint Gateways, their access binding or route status that failed and will be retried",
        errors.clone(),
    );
    errors
}

/// What the monitoring port serves.
pub struct Monitoring {
    pub registry: Registry,
    /// Set once the CA is loaded and the certificate service listens.
    pub ready: AtomicBool,
}

pub async fn serve(monitoring: Arc<Monitoring>, listener: TcpListener, stop: CancellationToken) {
    let route = move |req: Request<Incoming>| route(&monitoring, req);
    httpd::serve(listener, 32, route, stop).await;
}

fn route(monitoring: &Monitoring, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz/ready" if monitoring.ready.load(Ordering::Relaxed) => {
            httpd::reply(StatusCode::OK, "text/plain", "ready\n")
        }
        "/healthz/ready" => httpd::reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the CA is not loaded yet\n",
        ),
        "/metrics" => httpd::metrics(&monitoring.registry),
        _ => httpd::reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
