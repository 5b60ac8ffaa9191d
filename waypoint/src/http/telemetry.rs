//! Request metrics and the access log. Both are written when the response has ended (its
//! last byte or trailers sent, or the client gone), so durations cover streamed bodies and a
//! gRPC status that only arrives in trailers is seen.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body::{Body as _, Frame, SizeHint};
use tower::Layer;
use weft_core::telemetry::{ConnectionLabels, Reporter, RequestLabels, SecurityPolicy};

use super::body::{Body, BoxError, is_grpc};
use super::exchange::{Exchange, Flag};
use super::{Downstream, HttpService, layer_fn, next};
use crate::Waypoint;

pub fn layer(wp: Arc<Waypoint>) -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(move |inner, req| handle(wp.clone(), inner, req))
}

/// What the log line and the labels need from the request.
struct Started {
    wp: Arc<Waypoint>,
    exchange: Exchange,
    down: Option<Arc<Downstream>>,
    start: Instant,
    /// `start` on the wall clock, for the span.
    wall: std::time::SystemTime,
    method: String,
    path: String,
    protocol: &'static str,
    status: u16,
    grpc_status: Option<String>,
    bytes: u64,
}

async fn handle(wp: Arc<Waypoint>, inner: HttpService, mut req: Request<Body>) -> Response<Body> {
    let exchange = Exchange::default();
    req.extensions_mut().insert(exchange.clone());
    let protocol = if is_grpc(req.headers()) {
        "grpc"
    } else if req.version() == Version::HTTP_2 {
        "http2"
    } else {
        "http"
    };
    let started = Started {
        wp,
        exchange,
        down: req.extensions().get::<Arc<Downstream>>().cloned(),
        start: Instant::now(),
        wall: std::time::SystemTime::now(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        protocol,
        status: 0,
        grpc_status: None,
        bytes: 0,
    };
    let resp = next(inner, req).await;
    let (mut parts, body) = resp.into_parts();
    let mut started = started;
    started.status = parts.status.as_u16();
    started.grpc_status = grpc_status(&parts.headers);
    // Trailers-only gRPC answers (our own errors among them) end with the headers.
    let body = Recorded {
        inner: body,
        done: Some(started),
    };
    parts.extensions.clear();
    Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
}

/// The gRPC status code (0-16); anything else a backend sends is `unknown`, so a backend
/// cannot mint metric series.
fn grpc_status(h: &HeaderMap) -> Option<String> {
    let v = h.get("grpc-status")?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<u8>().ok())
            .filter(|c| *c <= 16)
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
    )
}

pin_project_lite::pin_project! {
    /// The response body, which records the exchange once when it ends or is dropped.
    struct Recorded {
        #[pin]
        inner: Body,
        done: Option<Started>,
    }

    impl PinnedDrop for Recorded {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(s) = this.done.take() {
                // hyper stops polling a body that says it has ended; one dropped before
                // that is a client that went away.
                let ended = this.inner.is_end_stream();
                if !ended {
                    s.exchange.flag(Flag::DownstreamReset);
                }
                finish(s, ended);
            }
        }
    }
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(s) = this.done.as_mut() {
                    if let Some(d) = frame.data_ref() {
                        s.bytes += d.len() as u64;
                    }
                    if let Some(t) = frame.trailers_ref()
                        && let Some(g) = grpc_status(t)
                    {
                        s.grpc_status = Some(g);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(s) = this.done.take() {
                    finish(s, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(s) = this.done.take() {
                    s.exchange.flag(Flag::UpstreamReset);
                    finish(s, false);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(s: Started, complete: bool) {
    let elapsed = s.start.elapsed();
    let log = s.exchange.with(std::mem::take);
    let mut c = ConnectionLabels::new(Reporter::Waypoint);
    c.connection_security_policy = SecurityPolicy::MutualTls;
    if let Some(d) = &s.down {
        c.source_principal = d.source_principal.clone();
        c.source_workload_namespace = d.source.namespace().to_owned();
        if let Some((name, _)) = &d.source_workload {
            c.source_workload = name.clone();
        }
        c.destination_service = d.service_hostname.clone();
    }
    if let Some(u) = &log.upstream {
        c.destination_workload = u.workload.clone();
        c.destination_workload_namespace = u.namespace.clone();
        if !u.principal.is_empty() {
            c.destination_principal = u.principal.clone();
        }
    }
    let flags = if log.flags.is_empty() {
        "-".to_owned()
    } else {
        log.flags
            .iter()
            .map(|f| f.code())
            .collect::<Vec<_>>()
            .join(",")
    };
    let grpc = s.grpc_status.clone().unwrap_or_else(|| "-".into());
    let labels = RequestLabels {
        connection: c,
        request_protocol: s.protocol,
        response_code: s.status,
        grpc_response_status: if s.protocol == "grpc" {
            grpc.clone()
        } else {
            "-".into()
        },
        response_flags: flags.clone(),
    };
    let ms = elapsed.as_secs_f64() * 1000.0;
    s.wp.requests.record(&labels, ms);
    let up = log.upstream.unwrap_or_default();
    if let (Some(ctx), Some(x)) = (log.span.filter(|c| c.sampled), &s.wp.spans.exporter) {
        use crate::spans::export::Attr;
        let name = match &log.route {
            Some(r) => format!("{} {r}", s.method),
            None => format!("{} {}", s.method, labels.connection.destination_service),
        };
        let mut attrs = vec![
            ("http.request.method", Attr::Str(s.method.clone())),
            ("url.path", Attr::Str(s.path.clone())),
            ("http.response.status_code", Attr::Int(i64::from(s.status))),
            ("network.protocol.name", Attr::Str(s.protocol.to_owned())),
            (
                "server.address",
                Attr::Str(labels.connection.destination_service.clone()),
            ),
            (
                "weft.source.principal",
                Attr::Str(labels.connection.source_principal.clone()),
            ),
            ("weft.response_flags", Attr::Str(flags.clone())),
            ("weft.request_id", Attr::Str(log.request_id.clone())),
            ("weft.attempts", Attr::Int(i64::from(log.attempts))),
        ];
        if let Some(d) = &s.down {
            attrs.push(("client.address", Attr::Str(d.client.ip().to_string())));
        }
        if !up.address.is_empty() {
            attrs.push(("weft.upstream.address", Attr::Str(up.address.clone())));
            attrs.push(("weft.upstream.backend", Attr::Str(up.backend.clone())));
        }
        if s.protocol == "grpc" {
            attrs.push(("rpc.grpc.status_code", Attr::Str(grpc.clone())));
        }
        let error = s.status >= 500 || !complete;
        x.record(&ctx, name, s.wall, s.wall + elapsed, error, attrs);
    }
    tracing::info!(
        target: "weft::access",
        direction = "waypoint",
        request_id = %log.request_id,
        method = %s.method,
        path = %s.path,
        protocol = s.protocol,
        status = s.status,
        grpc_status = %grpc,
        flags = %flags,
        route = log.route.as_deref().unwrap_or("-"),
        backend = %up.backend,
        attempts = log.attempts,
        src = %s.down.as_ref().map(|d| d.client.to_string()).unwrap_or_default(),
        src_identity = %labels.connection.source_principal,
        dst = %up.address,
        dst_identity = %up.principal,
        dst_service = %labels.connection.destination_service,
        bytes_sent = s.bytes,
        duration_ms = elapsed.as_millis() as u64,
        complete,
    );
}
