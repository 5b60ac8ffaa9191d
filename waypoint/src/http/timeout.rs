//! `timeouts.request` (the whole exchange up to the response headers, retries included) and
//! `timeouts.backendRequest` (one attempt). Either answers 504 when it fires; the response
//! body, once started, is not cut (a streaming gRPC response must be allowed to run).

use std::time::Duration;

use http::{Request, StatusCode};
use tower::Layer;

use super::body::{Body, answer, is_grpc};
use super::exchange::Flag;
use super::filters::Selected;
use super::{HttpService, ResponseFuture, layer_fn};

pub fn request_layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(|next, req| {
        let limit = rule_timeout(&req, |r| r.request_timeout);
        within(limit, next, req)
    })
}

pub fn attempt_layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(|next, req| {
        let limit = rule_timeout(&req, |r| r.backend_timeout);
        within(limit, next, req)
    })
}

fn rule_timeout(
    req: &Request<Body>,
    pick: fn(&crate::routes::Rule) -> Option<Duration>,
) -> Option<Duration> {
    req.extensions()
        .get::<Selected>()
        .and_then(|s| s.rule.as_deref())
        .and_then(pick)
}

fn within(limit: Option<Duration>, next: &HttpService, req: Request<Body>) -> ResponseFuture {
    let Some(limit) = limit else {
        return next.call(req);
    };
    let grpc = is_grpc(req.headers());
    let exchange = req.extensions().get::<super::exchange::Exchange>().cloned();
    let response = next.call(req);
    Box::pin(async move {
        match tokio::time::timeout(limit, response).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(x) = exchange {
                    x.flag(Flag::UpstreamTimeout);
                }
                answer(
                    grpc,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                )
            }
        }
    })
}
