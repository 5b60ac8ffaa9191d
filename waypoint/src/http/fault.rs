//! Fault injection on requests addressed to a Service (its traffic policies' `faults`): a
//! fixed delay before the request goes on, an abort that answers in the backend's place.

use http::{Request, Response};
use tower::Layer;

use super::body::{Body, answer, grpc_answer};
use super::exchange::{Flag, flag};
use super::{HttpService, layer_fn, next, tunnel_of};
use crate::traffic::fault::{self, Abort};

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(handle)
}

async fn handle(inner: HttpService, req: Request<Body>) -> Response<Body> {
    let Some((down, snap)) = tunnel_of(&req) else {
        return next(inner, req).await;
    };
    let injected = match snap
        .traffic
        .service(&down.service_namespace, &down.service_name)
    {
        Some(t) if !t.faults.is_empty() => fault::inject(&t.faults, req.headers()),
        _ => return next(inner, req).await,
    };
    if let Some(d) = injected.delay {
        flag(&req, Flag::DelayInjected);
        tokio::time::sleep(d).await;
    }
    match injected.abort {
        Some(a) => {
            flag(&req, Flag::FaultInjected);
            match a {
                // The status as the policy gives it, gRPC or not: that is what is injected.
                Abort::Http(status) => answer(false, status, "fault filter abort"),
                Abort::Grpc(code) => grpc_answer(code, "fault filter abort"),
            }
        }
        None => next(inner, req).await,
    }
}
