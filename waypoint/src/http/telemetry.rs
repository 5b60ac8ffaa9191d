//! Request metrics and the access log. Both are written when the response has ended (its
//! last byte or trailers sent, or the client gone), so durations cover streamed bodies and a
//! gRPC status that only arrives in trailers is seen.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tower::Layer;
use weft_core::model::Workload;
use weft_core::telemetry::{
    ConnectionLabels, Reporter, RequestLabels, RequestSeries, SecurityPolicy,
};

use super::body::{Body, BoxError, is_grpc};
use super::exchange::{Exchange, Flag, Log, Upstream};
use super::{Downstream, HttpService, ResponseFuture, layer_fn};
use crate::Waypoint;

pub fn layer(wp: Arc<Waypoint>) -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(move |next, req| handle(wp.clone(), next, req))
}

/// What the log line and the labels need from the request.
struct Started {
    wp: Arc<Waypoint>,
    exchange: Exchange,
    down: Option<Arc<Downstream>>,
    start: Instant,
    /// `start` on the wall clock, for the span.
    wall: std::time::SystemTime,
    method: Method,
    /// The request's URI as it arrived (a clone shares its bytes).
    uri: Uri,
    protocol: &'static str,
    status: u16,
    grpc_status: Option<&'static str>,
    bytes: u64,
}

fn handle(wp: Arc<Waypoint>, next: &HttpService, mut req: Request<Body>) -> ResponseFuture {
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
        method: req.method().clone(),
        uri: req.uri().clone(),
        protocol,
        status: 0,
        grpc_status: None,
        bytes: 0,
    };
    let response = next.call(req);
    Box::pin(async move {
        let (mut parts, body) = response.await.into_parts();
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
    })
}

/// The gRPC status code (0-16); anything else a backend sends is `unknown`, so a backend
/// cannot mint metric series.
fn grpc_status(h: &HeaderMap) -> Option<&'static str> {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    let v = h.get("grpc-status")?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .and_then(|c| CODES.get(c).copied())
            .unwrap_or("unknown"),
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

/// The request metrics' series a CONNECT stream has recorded to (kept in its
/// [`Downstream`]). The source half of the labels is the stream's own, so a series is known by
/// the rest: the upstream, protocol, status and flags. A hit records without building or
/// hashing a label set; a stream that sees many (a mesh reload makes new workload entries)
/// starts over.
#[derive(Default)]
pub struct SeriesCache(Mutex<Vec<(SeriesKey, RequestSeries)>>);

/// Series kept per stream before the cache starts over.
const SERIES_PER_STREAM: usize = 32;

impl std::fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeriesCache")
    }
}

struct SeriesKey {
    /// The upstream workload entry and whether it was reached over HBONE. Entries are shared,
    /// never copied, so a lookup compares addresses; holding the entry keeps its address from
    /// going to another entry after a mesh reload frees it (mimalloc hands a freed block of a
    /// size straight to the next allocation of that size).
    upstream: Option<(Arc<Workload>, bool)>,
    protocol: &'static str,
    status: u16,
    grpc: &'static str,
    flags: Vec<Flag>,
}

/// A request's key, borrowed: a lookup that hits copies nothing.
struct SeriesRef<'a> {
    upstream: Option<(&'a Arc<Workload>, bool)>,
    protocol: &'static str,
    status: u16,
    grpc: &'static str,
    flags: &'a [Flag],
}

impl SeriesKey {
    fn matches(&self, r: &SeriesRef<'_>) -> bool {
        let upstream = match (&self.upstream, r.upstream) {
            (None, None) => true,
            (Some((a, m)), Some((b, n))) => Arc::ptr_eq(a, b) && *m == n,
            _ => false,
        };
        upstream
            && self.protocol == r.protocol
            && self.status == r.status
            && self.grpc == r.grpc
            && self.flags == r.flags
    }
}

impl SeriesCache {
    fn series(&self, r: SeriesRef<'_>, make: impl FnOnce() -> RequestSeries) -> RequestSeries {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = cached.iter().find(|(k, _)| k.matches(&r)) {
            return s.clone();
        }
        let s = make();
        if cached.len() >= SERIES_PER_STREAM {
            cached.clear();
        }
        let key = SeriesKey {
            upstream: r.upstream.map(|(w, m)| (w.clone(), m)),
            protocol: r.protocol,
            status: r.status,
            grpc: r.grpc,
            flags: r.flags.to_vec(),
        };
        cached.push((key, s.clone()));
        s
    }
}

/// Envoy's flag list: `-` for none, else the codes comma separated.
fn flag_codes(flags: &[Flag]) -> String {
    if flags.is_empty() {
        return "-".to_owned();
    }
    flags.iter().map(|f| f.code()).collect::<Vec<_>>().join(",")
}

fn labels(s: &Started, log: &Log, grpc: &'static str) -> RequestLabels {
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
        c.destination_workload = u.workload.workload_name.clone();
        c.destination_workload_namespace = u.workload.namespace.clone();
        if let Some(p) = u.principal() {
            c.destination_principal = p.to_string();
        }
    }
    RequestLabels {
        connection: c,
        request_protocol: s.protocol,
        response_code: s.status,
        grpc_response_status: grpc.to_owned(),
        response_flags: flag_codes(&log.flags),
    }
}

fn finish(s: Started, complete: bool) {
    let elapsed = s.start.elapsed();
    let log = s.exchange.with(std::mem::take);
    let grpc = if s.protocol == "grpc" {
        s.grpc_status.unwrap_or("-")
    } else {
        "-"
    };
    let ms = elapsed.as_secs_f64() * 1000.0;
    let make = || s.wp.requests.series(&labels(&s, &log, grpc));
    let series = match &s.down {
        Some(d) => d.series.series(
            SeriesRef {
                upstream: log.upstream.as_ref().map(|u| (&u.workload, u.meshed)),
                protocol: s.protocol,
                status: s.status,
                grpc,
                flags: &log.flags,
            },
            make,
        ),
        None => make(),
    };
    series.record(ms);
    let service = s.down.as_ref().map_or("", |d| d.service_hostname.as_str());
    let principal = s.down.as_ref().map_or("", |d| d.source_principal.as_str());
    if let (Some(ctx), Some(x)) = (log.span.filter(|c| c.sampled), &s.wp.spans.exporter) {
        use crate::spans::export::Attr;
        let name = match &log.route {
            Some(r) => format!("{} {r}", s.method),
            None => format!("{} {service}", s.method),
        };
        let mut attrs = vec![
            ("http.request.method", Attr::Str(s.method.to_string())),
            ("url.path", Attr::Str(s.uri.path().to_owned())),
            ("http.response.status_code", Attr::Int(i64::from(s.status))),
            ("network.protocol.name", Attr::Str(s.protocol.to_owned())),
            ("server.address", Attr::Str(service.to_owned())),
            ("weft.source.principal", Attr::Str(principal.to_owned())),
            ("weft.response_flags", Attr::Str(flag_codes(&log.flags))),
            ("weft.request_id", Attr::Str(log.request_id.clone())),
            ("weft.attempts", Attr::Int(i64::from(log.attempts))),
        ];
        if let Some(d) = &s.down {
            attrs.push(("client.address", Attr::Str(d.client.ip().to_string())));
        }
        if let Some(u) = &log.upstream {
            attrs.push(("weft.upstream.address", Attr::Str(u.address.to_string())));
            attrs.push(("weft.upstream.backend", Attr::Str(u.backend.to_string())));
        }
        if s.protocol == "grpc" {
            attrs.push(("rpc.grpc.status_code", Attr::Str(grpc.to_owned())));
        }
        let error = s.status >= 500 || !complete;
        x.record(&ctx, name, s.wall, s.wall + elapsed, error, attrs);
    }
    // Fields are only evaluated when the access log is on.
    let up = log.upstream.as_ref();
    tracing::info!(
        target: "weft::access",
        direction = "waypoint",
        request_id = %log.request_id,
        method = %s.method,
        path = %s.uri.path(),
        protocol = s.protocol,
        status = s.status,
        grpc_status = %grpc,
        flags = %flag_codes(&log.flags),
        route = log.route.as_deref().unwrap_or("-"),
        backend = %up.map(|u| u.backend.to_string()).unwrap_or_default(),
        attempts = log.attempts,
        src = %s.down.as_ref().map(|d| d.client.to_string()).unwrap_or_default(),
        src_identity = %principal,
        dst = %up.map(|u| u.address.to_string()).unwrap_or_default(),
        dst_identity = %up.and_then(Upstream::principal).map(|p| p.to_string()).unwrap_or_default(),
        dst_service = %service,
        bytes_sent = s.bytes,
        duration_ms = elapsed.as_millis() as u64,
        complete,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use weft_core::telemetry::RequestMetrics;

    fn workload(name: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: name.to_owned(),
            name: name.to_owned(),
            workload_name: name.to_owned(),
            namespace: "default".to_owned(),
            service_account: name.to_owned(),
            ips: vec![[10, 0, 0, 1].into()],
            node: "node1".to_owned(),
            labels: Default::default(),
            mode: Default::default(),
            tunnel: Default::default(),
            inbound: Default::default(),
            waypoint: None,
            netns: None,
            identity: Workload::identity_for("cluster.local", "default", name)
                .expect("a valid identity"),
        })
    }

    fn key(w: &Arc<Workload>) -> SeriesRef<'_> {
        SeriesRef {
            upstream: Some((w, true)),
            protocol: "http",
            status: 200,
            grpc: "-",
            flags: &[],
        }
    }

    /// A stream outlives mesh reloads. Once a reload has freed the entry a series was
    /// cached for, the next entry must not be taken for it, even at the same address: its
    /// requests would be counted under another workload's labels.
    #[test]
    fn a_series_is_never_reused_for_another_upstream_entry() {
        let metrics = RequestMetrics::register(&mut Registry::default());
        let labels = RequestLabels {
            connection: ConnectionLabels::new(Reporter::Waypoint),
            request_protocol: "http",
            response_code: 200,
            grpc_response_status: "-".to_owned(),
            response_flags: "-".to_owned(),
        };
        let cache = SeriesCache::default();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            metrics.series(&labels)
        };
        let first = workload("first");
        cache.series(key(&first), make);
        cache.series(key(&first), make);
        assert_eq!(made.get(), 1, "the same entry hits");
        drop(first);
        for i in 0..100 {
            // Same size as the freed entry: the allocator's first choice for its block.
            let next = workload("first");
            cache.series(key(&next), make);
            assert_eq!(made.get(), 2 + i, "a new entry is a new series");
            // Keep only the latest, so the cache's 32 entries start over as in a long stream.
            if i % 30 == 29 {
                cache.0.lock().unwrap().clear();
            }
        }
    }
}
