//! L7 authorization: the AuthorizationPolicies attached (`targetRefs`) to the Service or to
//! this waypoint's Gateway, with Istio's semantics over the request, the client's identity
//! from the tunnel, and the normalised path. Denied: 403, or PERMISSION_DENIED for gRPC.

use std::sync::Arc;

use http::header::HOST;
use http::{Request, StatusCode};
use tower::Layer;
use weft_core::authz::{ConnectionInfo, RequestInfo};

use super::body::{Body, answer, is_grpc};
use super::exchange::{Exchange, Flag};
use super::{HttpService, ResponseFuture, layer_fn, ready, tunnel_of};
use crate::Waypoint;

pub fn layer(wp: Arc<Waypoint>) -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(move |next, req| handle(&wp, next, req))
}

fn handle(wp: &Waypoint, next: &HttpService, req: Request<Body>) -> ResponseFuture {
    let Some((down, snap)) = tunnel_of(&req) else {
        return ready(answer(
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            "request without its tunnel",
        ));
    };
    let source = &down.source_principal;
    let conn = ConnectionInfo {
        source_principal: Some(source),
        source_namespace: Some(down.source.namespace()),
        source_ip: down.client.ip(),
        destination_ip: down.vip.ip(),
        destination_port: down.vip.port(),
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or(req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let info = RequestInfo {
        method: req.method().as_str(),
        path: req.uri().path(),
        host,
        headers: req.headers(),
    };
    let decision = snap.state.policies.evaluate_waypoint(
        &down.service_namespace,
        &down.service_name,
        &wp.name,
        &conn,
        &info,
    );
    if !decision.audited.is_empty() {
        tracing::info!(target: "weft::audit", service = %down.service_hostname, %source, method = %req.method(), path = %req.uri().path(), "{decision}");
    }
    if !decision.allowed {
        if let Some(x) = req.extensions().get::<Exchange>() {
            x.flag(Flag::Denied);
            x.with(|l| l.policy = Some(decision.reason.to_string()));
        }
        tracing::debug!(service = %down.service_hostname, %source, "request denied: {decision}");
        return ready(answer(
            is_grpc(req.headers()),
            StatusCode::FORBIDDEN,
            &format!("RBAC: access denied ({})", decision.reason),
        ));
    }
    next.call(req)
}
