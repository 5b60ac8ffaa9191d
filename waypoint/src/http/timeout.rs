//! `timeouts.request` (the whole exchange up to the response headers, retries included) and
//! `timeouts.backendRequest` (one attempt). Either answers 504 when it fires; the response
//! body, once started, is not cut (a streaming gRPC response must be allowed to run).

use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::Layer;

use super::body::{Body, answer, is_grpc};
use super::exchange::Flag;
use super::filters::Selected;
use super::{HttpService, layer_fn, next};

pub fn request_layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(|inner, req| {
        let limit = rule_timeout(&req, |r| r.request_timeout);
        within(limit, inner, req)
    })
}

pub fn attempt_layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(|inner, req| {
        let limit = rule_timeout(&req, |r| r.backend_timeout);
        within(limit, inner, req)
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

async fn within(limit: Option<Duration>, inner: HttpService, req: Request<Body>) -> Response<Body> {
    let Some(limit) = limit else {
        return next(inner, req).await;
    };
    let grpc = is_grpc(req.headers());
    let exchange = req.extensions().get::<super::exchange::Exchange>().cloned();
    match tokio::time::timeout(limit, next(inner, req)).await {
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
}
