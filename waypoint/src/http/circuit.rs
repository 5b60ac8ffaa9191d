//! Circuit breaking, per attempt: over the backend Service's `connectionPool.maxRequests`
//! in flight the attempt fails at once with 503 and `response_flags="UO"`; an attempt holds
//! its place until its response body has ended.

use http::{Request, StatusCode};
use tower::Layer;

use super::body::{self, Body, answer, is_grpc};
use super::exchange::{Flag, flag};
use super::filters::Selected;
use super::retry::Overflowed;
use super::{HttpService, ResponseFuture, layer_fn, ready, tunnel_of};

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(handle)
}

fn handle(next: &HttpService, req: Request<Body>) -> ResponseFuture {
    let traffic = match (tunnel_of(&req), req.extensions().get::<Selected>()) {
        (Some((_, snap)), Some(sel)) => snap
            .traffic
            .service(&sel.target.namespace, &sel.target.name),
        _ => None,
    };
    let Some(traffic) = traffic else {
        return next.call(req);
    };
    match traffic.circuit.request(traffic.pool.max_requests) {
        Ok(held) => {
            let response = next.call(req);
            Box::pin(async move { response.await.map(|b| body::guarded(b, held)) })
        }
        Err(over) => {
            flag(&req, Flag::UpstreamOverflow);
            let mut r = answer(
                is_grpc(req.headers()),
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream overflow: {over}"),
            );
            r.extensions_mut().insert(Overflowed);
            ready(r)
        }
    }
}
