//! Routing: the Gateway API rule a request takes, or none when no route is attached to the
//! Service (it is then its own backend). The rule's filters and backend are the `filters`
//! layer's, so that rate limits and faults below see the route before anything acts on it.

use std::sync::Arc;

use http::{Request, StatusCode};
use tower::Layer;

use super::body::{Body, answer, is_grpc};
use super::exchange::{Exchange, Flag};
use super::{HttpService, ResponseFuture, layer_fn, ready, tunnel_of};
use crate::routes::{RequestView, Rule};

/// What routing chose (a request extension for the layers below).
#[derive(Clone)]
pub struct Routed {
    /// None: no route is attached to the port; the Service is its own backend.
    pub rule: Option<Arc<Rule>>,
    /// The PathPrefix matched, for `ReplacePrefixMatch`.
    pub prefix: Option<String>,
}

impl Routed {
    /// The route's `namespace/name`.
    pub fn route(&self) -> Option<&str> {
        self.rule.as_deref().map(|r| r.route.as_str())
    }
}

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(handle)
}

fn handle(next: &HttpService, mut req: Request<Body>) -> ResponseFuture {
    let grpc = is_grpc(req.headers());
    let Some((down, snap)) = tunnel_of(&req) else {
        return ready(answer(
            grpc,
            StatusCode::INTERNAL_SERVER_ERROR,
            "request without its tunnel",
        ));
    };
    let port = down.vip.port();
    let routes = snap
        .routes
        .service(&down.service_namespace, &down.service_name)
        .filter(|r| r.covers(port));
    let Some(routes) = routes else {
        req.extensions_mut().insert(Routed {
            rule: None,
            prefix: None,
        });
        return next.call(req);
    };
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some(sel) = routes.select(port, &view) else {
        super::exchange::flag(&req, Flag::NoRoute);
        return ready(answer(
            grpc,
            StatusCode::NOT_FOUND,
            "no route matched the request",
        ));
    };
    let routed = Routed {
        rule: Some(sel.rule.clone()),
        prefix: sel.prefix.map(str::to_owned),
    };
    if let Some(x) = req.extensions().get::<Exchange>() {
        x.with(|l| l.route = Some(sel.rule.log_name.clone()));
    }
    req.extensions_mut().insert(routed);
    next.call(req)
}
