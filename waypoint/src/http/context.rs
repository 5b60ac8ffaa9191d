//! What the waypoint does to every request before anything reads it: one normalised path
//! (routing and authorization must see the path the backend will), no hop-by-hop headers,
//! the client added to `x-forwarded-for` and `forwarded`, a request id, and the trace
//! context continued with the waypoint's own span (`spans`).

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri};
use tower::Layer;
use weft_core::authz::normalize_path;

use super::body::{Body, answer, is_grpc};
use super::exchange::{Exchange, Flag};
use super::{Downstream, HttpService, ResponseFuture, layer_fn, ready};
use crate::Waypoint;

pub fn layer(wp: Arc<Waypoint>) -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(move |next, req| handle(&wp, next, req))
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn handle(wp: &Waypoint, next: &HttpService, mut req: Request<Body>) -> ResponseFuture {
    let grpc = is_grpc(req.headers());
    let refuse = |req: &Request<Body>, status, msg: &str| -> ResponseFuture {
        super::exchange::flag(req, Flag::DownstreamProtocolError);
        ready(answer(grpc, status, msg))
    };
    if req.method() == Method::CONNECT {
        return refuse(
            &req,
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not proxied by the waypoint",
        );
    }
    // Two Host lines (RFC 9112 3.2 says 400), or an h2 `host` that contradicts `:authority`:
    // policy would read one and the backend maybe the other.
    let hosts = req.headers().get_all(header::HOST).iter().count();
    let contradicts = req.uri().authority().is_some_and(|a| {
        req.headers()
            .get(header::HOST)
            .is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()))
    });
    if hosts > 1 || contradicts {
        return refuse(&req, StatusCode::BAD_REQUEST, "conflicting Host headers");
    }
    match normalized_uri(req.uri()) {
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Ok(None) => {}
        Err(e) => {
            return refuse(
                &req,
                StatusCode::BAD_REQUEST,
                &format!("bad request path: {e}"),
            );
        }
    }
    let upgrade = is_upgrade(req.headers());
    strip_hop_by_hop(req.headers_mut(), upgrade);
    // The waypoint answers `100-continue` itself (hyper does, when the body is first read).
    req.headers_mut().remove(header::EXPECT);
    if let Some(ip) = req
        .extensions()
        .get::<Arc<Downstream>>()
        .map(|d| d.client.ip())
    {
        forwarded_for(req.headers_mut(), ip);
    }
    let id = request_id(req.headers_mut());
    let span = wp.spans.continue_trace(req.headers_mut());
    if let Some(x) = req.extensions().get::<Exchange>() {
        x.with(|l| {
            l.request_id = id;
            l.span = Some(span);
        });
    }
    let response = next.call(req);
    Box::pin(async move {
        let mut resp = response.await;
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(resp.headers_mut(), switched);
        resp
    })
}

/// The URI with its path normalised; `None` when it already was.
fn normalized_uri(uri: &Uri) -> Result<Option<Uri>, String> {
    let path = uri.path();
    let normalized = normalize_path(path).map_err(|e| e.to_string())?;
    if normalized == path {
        return Ok(None);
    }
    with_path(uri, &normalized).map(Some)
}

/// `uri` with its path replaced, the query kept.
pub fn with_path(uri: &Uri, path: &str) -> Result<Uri, String> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|e| e.to_string())?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// An upgrade the waypoint carries: WebSocket only. Anything else after a 101 would be a
/// tunnel that routing and policy never see again (`h2c` above all: one authorized request,
/// then any request over HTTP/2), so other upgrade tokens are dropped with the hop-by-hop
/// headers and the request goes on as plain HTTP.
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Hop-by-hop headers besides `connection`, `upgrade` and `te`, which need a closer look.
/// Names, not strings: a string would be parsed and validated again on every request.
static HOP_BY_HOP: [HeaderName; 7] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    // HBONE metadata belongs to the tunnel, never to a request inside it.
    HeaderName::from_static(weft_core::hbone::headers::ORIGINAL_PRINCIPAL),
    HeaderName::from_static("http2-settings"),
];

/// Headers that describe one connection and must not be forwarded (RFC 9110 7.6.1), and those
/// the `connection` header names. An upgrade keeps `connection: upgrade` and `upgrade`: the
/// backend must see the request for what it is. `te: trailers` stays (gRPC needs it).
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    if h.is_empty() {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if !upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    } else {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn forwarded_for(h: &mut HeaderMap, ip: std::net::IpAddr) {
    let ip_text = ip.to_string();
    let xff = match h.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip_text}"),
        None => ip_text.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(XFF, v);
    }
    // RFC 7239: IPv6 addresses are quoted and bracketed.
    let node = if ip.is_ipv6() {
        format!("for=\"[{ip_text}]\";proto=http")
    } else {
        format!("for={ip_text};proto=http")
    };
    let fwd = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {node}"),
        None => node,
    };
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        h.insert(header::FORWARDED, v);
    }
    // What the client says about its own scheme is not believed: inside the mesh it is http.
    h.insert(XFP, HeaderValue::from_static("http"));
}

/// The client's `x-request-id` when it is a sane one, else a new one (UUID v4 form).
fn request_id(h: &mut HeaderMap) -> String {
    if let Some(v) = h.get(&REQUEST_ID).and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 128
    {
        return v.to_owned();
    }
    let r = fastrand::u128(..);
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (r >> 96) as u32,
        (r >> 80) as u16,
        (r >> 68) as u16 & 0x0fff,
        ((r >> 52) as u16 & 0x3fff) | 0x8000,
        r as u64 & 0xffff_ffff_ffff
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(REQUEST_ID, v);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret".parse().expect("v"),
        );
        h.insert("x-secret", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert(header::TE, "trailers, deflate".parse().expect("v"));
        h.insert("x-kept", "1".parse().expect("v"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret") && !h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("keep-alive"));
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "203.0.113.9".parse().expect("v"));
        forwarded_for(&mut h, "10.0.0.1".parse().expect("ip"));
        assert_eq!(h[&XFF], "203.0.113.9, 10.0.0.1");
        assert_eq!(h[header::FORWARDED], "for=10.0.0.1;proto=http");
    }
}
