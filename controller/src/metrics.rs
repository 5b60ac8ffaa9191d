//! The controller's metrics and its monitoring port (`/metrics`, `/healthz/ready`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// What the monitoring port serves.
pub struct Monitoring {
    pub registry: Registry,
    /// Set once the CA is loaded and the certificate service listens.
    pub ready: AtomicBool,
}

const MAX_CONNECTIONS: usize = 32;
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(monitoring: Arc<Monitoring>, listener: TcpListener, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("monitoring accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let monitoring = monitoring.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let monitoring = monitoring.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&monitoring, req)) }
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

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<bytes::Bytes>> {
    let mut r = Response::new(Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn route(monitoring: &Monitoring, req: Request<Incoming>) -> Response<Full<bytes::Bytes>> {
    match req.uri().path() {
        "/healthz/ready" if monitoring.ready.load(Ordering::Relaxed) => {
            reply(StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        "/healthz/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the CA is not loaded yet\n".to_owned(),
        ),
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &monitoring.registry) {
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
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}
