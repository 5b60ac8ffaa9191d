//! Local rate limits of the Service a request is addressed to (its traffic policies'
//! `rateLimits`): every limit covering the request's route must have a token, from the
//! shared bucket or the client identity's own. Refused: 429 with `retry-after`; answers carry
//! `x-ratelimit-limit`, `-remaining` and `-reset` (seconds) of the tightest limit.

use http::{HeaderValue, Request, StatusCode};
use tower::Layer;

use super::body::{Body, answer, is_grpc};
use super::exchange::{Flag, flag};
use super::route::Routed;
use super::{HttpService, ResponseFuture, layer_fn, ready, tunnel_of};
use crate::traffic::limit::Verdict;

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(handle)
}

fn handle(next: &HttpService, req: Request<Body>) -> ResponseFuture {
    let Some((down, snap)) = tunnel_of(&req) else {
        return next.call(req);
    };
    let Some(traffic) = snap
        .traffic
        .service(&down.service_namespace, &down.service_name)
        .filter(|t| !t.limits.is_empty())
    else {
        return next.call(req);
    };
    let route = req.extensions().get::<Routed>().and_then(|r| r.route());
    let source = down.source_principal.as_str();
    let mut taken: Vec<&crate::traffic::limit::Limiter> = Vec::new();
    let mut tightest: Option<Verdict> = None;
    for (namespace, limit) in &traffic.limits {
        if !limit.covers(namespace, route) {
            continue;
        }
        let v = limit.take(source);
        if !v.allowed {
            for l in taken {
                l.give_back(source);
            }
            flag(&req, Flag::RateLimited);
            let mut resp = answer(
                is_grpc(req.headers()),
                StatusCode::TOO_MANY_REQUESTS,
                "local rate limit exceeded",
            );
            let h = resp.headers_mut();
            h.insert("retry-after", HeaderValue::from(seconds(&v)));
            headers(h, &v);
            return ready(resp);
        }
        taken.push(limit);
        if tightest.is_none_or(|t| v.remaining < t.remaining) {
            tightest = Some(v);
        }
    }
    let response = next.call(req);
    Box::pin(async move {
        let mut resp = response.await;
        if let Some(v) = tightest {
            headers(resp.headers_mut(), &v);
        }
        resp
    })
}

/// Whole seconds until the next fill, at least one (what `retry-after` can say).
fn seconds(v: &Verdict) -> u64 {
    v.reset.as_secs_f64().ceil().max(1.0) as u64
}

fn headers(h: &mut http::HeaderMap, v: &Verdict) {
    h.insert("x-ratelimit-limit", HeaderValue::from(v.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(v.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(seconds(v)));
}
