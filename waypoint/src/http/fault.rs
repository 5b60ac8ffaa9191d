//! Fault injection on requests addressed to a Service (its traffic policies' `faults`): a
//! fixed delay before the request goes on, an abort that answers in the backend's place.

use http::Request;
use tower::Layer;

use super::body::{Body, answer, grpc_answer};
use super::exchange::{Flag, flag};
use super::{HttpService, ResponseFuture, layer_fn, ready, tunnel_of};
use crate::traffic::fault::{self, Abort};

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(handle)
}

fn handle(next: &HttpService, req: Request<Body>) -> ResponseFuture {
    let Some((down, snap)) = tunnel_of(&req) else {
        return next.call(req);
    };
    let injected = match snap
        .traffic
        .service(&down.service_namespace, &down.service_name)
    {
        Some(t) if !t.faults.is_empty() => fault::inject(&t.faults, req.headers()),
        _ => return next.call(req),
    };
    let abort = injected.abort.map(|a| {
        flag(&req, Flag::FaultInjected);
        match a {
            // The status as the policy gives it, gRPC or not: that is what is injected.
            Abort::Http(status) => answer(false, status, "fault filter abort"),
            Abort::Grpc(code) => grpc_answer(code, "fault filter abort"),
        }
    });
    let Some(delay) = injected.delay else {
        return match abort {
            Some(a) => ready(a),
            None => next.call(req),
        };
    };
    flag(&req, Flag::DelayInjected);
    let next = next.clone();
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        match abort {
            Some(a) => a,
            None => next.call(req).await,
        }
    })
}
