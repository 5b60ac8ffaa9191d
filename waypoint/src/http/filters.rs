//! A rule's filters in the spec's order (header modifiers, rewrite, redirect, mirrors), and
//! one backend by weight; with no route, the Service itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::Layer;
use weft_core::model::route::{PathModifier, PathModifierType, RequestRedirect, UrlRewrite};

use super::body::{self, Body, answer, is_grpc};
use super::exchange::Flag;
use super::route::Routed;
use super::{Downstream, HttpService, ResponseFuture, Snapshot, layer_fn, ready, tunnel_of};
use crate::routes::{BackendTarget, Rule};

/// The backend chosen (a request extension for the layers below).
#[derive(Clone)]
pub struct Selected {
    /// None: no route is attached; the Service is its own backend.
    pub rule: Option<Arc<Rule>>,
    pub target: BackendTarget,
}

/// Bodies up to this size are copied for a mirror; larger ones are not mirrored (the
/// client's request must not wait on a copy).
const MIRROR_BODY_LIMIT: u64 = 64 * 1024;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
/// Mirrors in flight at once, across the waypoint; beyond it requests are not mirrored (a
/// slow mirror must not pile up tasks and tunnels).
static MIRRORS_IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(256);

pub fn layer(backend: HttpService) -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(move |next, req| handle(&backend, next, req))
}

fn handle(backend: &HttpService, next: &HttpService, mut req: Request<Body>) -> ResponseFuture {
    let grpc = is_grpc(req.headers());
    let (Some((down, _)), Some(routed)) =
        (tunnel_of(&req), req.extensions().get::<Routed>().cloned())
    else {
        return ready(answer(
            grpc,
            StatusCode::INTERNAL_SERVER_ERROR,
            "request without its route",
        ));
    };
    let port = down.vip.port();
    let Some(rule) = routed.rule else {
        let target = BackendTarget {
            namespace: down.service_namespace.clone(),
            name: down.service_name.clone(),
            port,
        };
        req.extensions_mut().insert(Selected { rule: None, target });
        return next.call(req);
    };
    let prefix = routed.prefix;
    for ops in &rule.request_headers {
        ops.apply(req.headers_mut());
    }
    if let Some(r) = &rule.rewrite
        && let Err(e) = rewrite(&mut req, r, prefix.as_deref())
    {
        return ready(answer(
            grpc,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("URL rewrite: {e}"),
        ));
    }
    if let Some(r) = &rule.redirect {
        return ready(redirect(&req, r, prefix.as_deref(), port));
    }
    if rule.mirrors.is_empty() {
        return to_backend(next, req, rule, grpc);
    }
    let (backend, next) = (backend.clone(), next.clone());
    Box::pin(async move {
        match mirror(&backend, req, &rule).await {
            Some(req) => to_backend(&next, req, rule, grpc).await,
            None => answer(
                grpc,
                StatusCode::BAD_REQUEST,
                "the request body ended early",
            ),
        }
    })
}

/// One of the rule's backends by weight, with its own header filters.
fn to_backend(
    next: &HttpService,
    mut req: Request<Body>,
    rule: Arc<Rule>,
    grpc: bool,
) -> ResponseFuture {
    let Some(i) = rule.pick_backend() else {
        super::exchange::flag(&req, Flag::NoHealthyUpstream);
        // The spec's answer for a rule whose backends are all missing or weighted zero.
        return ready(answer(
            grpc,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the route has no backend to send to",
        ));
    };
    let chosen = &rule.backends[i];
    for ops in &chosen.request_headers {
        ops.apply(req.headers_mut());
    }
    let rewrites_response =
        !rule.response_headers.is_empty() || !chosen.response_headers.is_empty();
    req.extensions_mut().insert(Selected {
        rule: Some(rule.clone()),
        target: chosen.target.clone(),
    });
    let response = next.call(req);
    if !rewrites_response {
        return response;
    }
    Box::pin(async move {
        let mut resp = response.await;
        let chosen = &rule.backends[i];
        for ops in rule.response_headers.iter().chain(&chosen.response_headers) {
            ops.apply(resp.headers_mut());
        }
        resp
    })
}

/// `/foo/bar` with prefix `/foo` replaced by `/xyz` is `/xyz/bar`; by `/` it is `/bar`.
fn replace_prefix(path: &str, prefix: &str, with: &str) -> String {
    let rest = path.get(prefix.len()..).unwrap_or("");
    let out = if with.ends_with('/') && rest.starts_with('/') {
        format!("{with}{}", &rest[1..])
    } else {
        format!("{with}{rest}")
    };
    if out.is_empty() { "/".into() } else { out }
}

fn new_path(path: &str, m: &PathModifier, prefix: Option<&str>) -> String {
    match m.kind {
        PathModifierType::ReplaceFullPath => {
            m.replace_full_path.clone().unwrap_or_else(|| "/".into())
        }
        PathModifierType::ReplacePrefixMatch => {
            let with = m.replace_prefix_match.as_deref().unwrap_or("/");
            replace_prefix(path, prefix.unwrap_or(""), with)
        }
    }
}

fn rewrite(req: &mut Request<Body>, r: &UrlRewrite, prefix: Option<&str>) -> Result<(), String> {
    if let Some(h) = &r.hostname {
        let v = HeaderValue::from_str(h).map_err(|e| e.to_string())?;
        req.headers_mut().insert(HOST, v);
        if req.uri().authority().is_some() {
            let mut parts = req.uri().clone().into_parts();
            let port = req.uri().port_u16();
            let a = match port {
                Some(p) => format!("{h}:{p}"),
                None => h.clone(),
            };
            parts.authority = Some(Authority::try_from(a).map_err(|e| e.to_string())?);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|e| e.to_string())?;
        }
    }
    if let Some(m) = &r.path {
        let path = new_path(req.uri().path(), m, prefix);
        *req.uri_mut() = super::context::with_path(req.uri(), &path)?;
    }
    Ok(())
}

/// The redirect's `Location`: each part the filter sets, the request's for the others. The
/// port is left out when it is the scheme's well-known one.
fn redirect(
    req: &Request<Body>,
    r: &RequestRedirect,
    prefix: Option<&str>,
    port: u16,
) -> Response<Body> {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host_header = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or(req.uri().authority().map(Authority::as_str))
        .unwrap_or("");
    let request_host = host_header.rsplit_once(':').map_or(host_header, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host_header
        }
    });
    let host = r.hostname.as_deref().unwrap_or(request_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(port),
    };
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(m) => new_path(req.uri().path(), m, prefix),
        None => req.uri().path().to_owned(),
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&path);
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    let status = StatusCode::from_u16(r.status_code.unwrap_or(302)).unwrap_or(StatusCode::FOUND);
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// Sends a copy of the request to each mirror backend without waiting for it; the copy's
/// answer is dropped. A body is copied only when it is small and its size is declared.
async fn mirror(backend: &HttpService, req: Request<Body>, rule: &Rule) -> Option<Request<Body>> {
    let wanted: Vec<_> = rule
        .mirrors
        .iter()
        .filter(|m| m.percent >= 100 || fastrand::u32(0..100) < m.percent)
        .collect();
    if wanted.is_empty() {
        return Some(req);
    }
    let (parts, b) = req.into_parts();
    let copyable = b.is_end_stream()
        || b.size_hint()
            .exact()
            .is_some_and(|n| n <= MIRROR_BODY_LIMIT);
    let (bytes, b) = if copyable {
        match b.collect().await {
            Ok(c) => {
                let bytes: Bytes = c.to_bytes();
                (bytes.clone(), body::full(bytes))
            }
            Err(e) => {
                // The request is not sent on with a body shorter than it declares.
                tracing::debug!("request body failed before mirroring: {e}");
                return None;
            }
        }
    } else {
        tracing::debug!(route = %rule.route, "request body too large or unsized to mirror; not mirrored");
        return Some(Request::from_parts(parts, b));
    };
    for m in wanted {
        let mut copy = Request::new(body::full(bytes.clone()));
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        if let Some(down) = parts.extensions.get::<Arc<Downstream>>() {
            copy.extensions_mut().insert(down.clone());
        }
        if let Some(snap) = parts.extensions.get::<Snapshot>() {
            copy.extensions_mut().insert(snap.clone());
        }
        copy.extensions_mut().insert(Selected {
            rule: None,
            target: m.target.clone(),
        });
        let backend = backend.clone();
        let target = m.target.clone();
        let Ok(permit) = MIRRORS_IN_FLIGHT.try_acquire() else {
            tracing::debug!(mirror = %target, "too many mirrored requests in flight; not mirrored");
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            // The whole exchange, body included, within the limit; the body is read and
            // dropped frame by frame, never kept.
            let exchange = async {
                let resp = backend.call(copy).await;
                let status = resp.status();
                let mut body = resp.into_body();
                while let Some(Ok(_)) = body.frame().await {}
                status
            };
            match tokio::time::timeout(MIRROR_TIMEOUT, exchange).await {
                Ok(status) => {
                    tracing::debug!(mirror = %target, %status, "mirrored request answered")
                }
                Err(_) => tracing::debug!(mirror = %target, "mirrored request timed out"),
            }
        });
    }
    Some(Request::from_parts(parts, b))
}

#[cfg(test)]
mod tests {
    use super::replace_prefix;

    #[test]
    fn prefix_replacement_as_the_spec_shows_it() {
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/xyz"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/"), "/bar");
        assert_eq!(replace_prefix("/foo", "/foo", "/"), "/");
        assert_eq!(replace_prefix("/foo", "/foo", "/xyz/"), "/xyz/");
        assert_eq!(replace_prefix("/foo/bar", "", "/api"), "/api/foo/bar");
    }
}
