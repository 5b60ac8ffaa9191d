//! The innermost service: an endpoint of the chosen backend Service by the Service's
//! balancer (`traffic::balance`), and the request sent to it over a pooled HTTP connection
//! inside HBONE (or plain TCP for an endpoint outside the mesh). The protocol towards it is
//! the backend port's `appProtocol`, else the client's. How the attempt went is recorded for
//! the endpoint's cost and outlier detection.

use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, StatusCode, Uri, Version};

use super::body::{self, Body, answer, is_grpc};
use super::client::{Proto, SendError, Target};
use super::context::is_upgrade;
use super::exchange::{Exchange, Flag, Upstream};
use super::filters::Selected;
use super::retry::{ConnectFailed, Overflowed};
use super::{Downstream, HttpService, ResponseFuture, ready, tunnel_of};
use crate::Waypoint;
use crate::traffic::balance::Outcome;
use crate::upstream;

pub fn service(wp: Arc<Waypoint>) -> HttpService {
    HttpService::new(move |req| handle(&wp, req))
}

/// `appProtocol` values that mean HTTP/2 towards the endpoint.
fn protocol(app_protocol: Option<&str>, client: Version) -> Proto {
    let is = |names: &[&str]| {
        app_protocol.is_some_and(|p| names.iter().any(|n| p.eq_ignore_ascii_case(n)))
    };
    if is(&["http2", "grpc", "kubernetes.io/h2c"]) {
        Proto::Http2
    } else if is(&["http"]) {
        Proto::Http1
    } else if client == Version::HTTP_2 {
        Proto::Http2
    } else {
        Proto::Http1
    }
}

fn handle(wp: &Arc<Waypoint>, mut req: Request<Body>) -> ResponseFuture {
    let grpc = is_grpc(req.headers());
    let (Some((down, snap)), Some(sel)) = (
        tunnel_of(&req).map(|(d, s)| (d.clone(), s)),
        req.extensions().get::<Selected>().cloned(),
    ) else {
        return ready(answer(
            grpc,
            StatusCode::INTERNAL_SERVER_ERROR,
            "request without its route",
        ));
    };
    let exchange = req.extensions().get::<Exchange>().cloned();
    // The waypoint's own 503s, each with the flag that says why.
    let failed = |flag: Flag, why: String| {
        if let Some(x) = &exchange {
            x.flag(flag);
        }
        answer(grpc, StatusCode::SERVICE_UNAVAILABLE, &why)
    };
    let unavailable = |why: String| ready(failed(Flag::NoHealthyUpstream, why));
    let target = &sel.target;
    let state = &snap.state;
    let Some(service) = state.service(&target.namespace, &target.name) else {
        return unavailable(format!("backend {target}: no such service"));
    };
    let Some(port) = service.port(target.port) else {
        return unavailable(format!("backend {target}: the service has no such port"));
    };
    let traffic = snap
        .traffic
        .service(&target.namespace, &target.name)
        .cloned();
    let picked = match &traffic {
        Some(t) => {
            let n = service.endpoints.len();
            let key = t
                .hash_header
                .as_ref()
                .and_then(|h| req.headers().get(h))
                .map(|v| v.as_bytes());
            t.endpoints
                .pick(t.balancer, key, n, |i| {
                    &state.workloads[service.endpoints[i]]
                })
                .map(|(w, s)| (w, Some((s, n))))
        }
        // A Service newer than the compiled traffic table (the two are swapped one after
        // the other): round robin until the table catches up.
        None => state.next_endpoint(service).map(|w| (w, None)),
    };
    let Some((ep, stats)) = picked else {
        return unavailable(format!("backend {target}: no healthy endpoint"));
    };
    let chosen = upstream::choose(ep, port.target(), down.vip, state.hbone_port);
    let proto = protocol(port.app_protocol.as_deref(), req.version());
    if let Some(x) = &exchange {
        x.with(|l| {
            l.upstream = Some(Upstream {
                workload: chosen.workload.clone(),
                address: chosen.address,
                meshed: chosen.hbone.is_some(),
                backend: target.clone(),
            })
        });
    }
    let upgrade = proto == Proto::Http1 && is_upgrade(req.headers());
    if let Err(e) = for_upstream(&mut req, proto, &down) {
        return ready(answer(
            grpc,
            StatusCode::BAD_REQUEST,
            &format!("request target: {e}"),
        ));
    }
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let target = Arc::new(Target {
        chosen,
        client: down.client,
        identity: down.source.clone(),
    });
    let in_flight = stats.as_ref().map(|(s, _)| s.start());
    let wp = wp.clone();
    Box::pin(async move {
        let failed = |flag: Flag, why: String| {
            if let Some(x) = &exchange {
                x.flag(flag);
            }
            answer(grpc, StatusCode::SERVICE_UNAVAILABLE, &why)
        };
        let pool = traffic.as_ref().map(|t| (&t.pool, &t.circuit));
        let started = Instant::now();
        let sent = wp
            .clients
            .send(&wp, target, proto, req, upgrade, pool)
            .await;
        drop(in_flight);
        if let (Some(t), Some((s, endpoints))) = (&traffic, &stats) {
            let outcome = match &sent {
                Ok(r) => Some(Outcome::Status(r.response.status().as_u16())),
                Err(SendError::Connect(_)) => Some(Outcome::ConnectFailure),
                Err(SendError::Http(_)) => Some(Outcome::Reset),
                // The waypoint's own limit; says nothing of the endpoint.
                Err(SendError::Overflow(_)) => None,
            };
            if let Some(o) = outcome {
                t.endpoints
                    .record(s, started.elapsed(), o, t.outlier.as_ref(), *endpoints);
            }
        }
        let (resp, slot) = match sent {
            Ok(r) => (r.response, r.slot),
            Err(SendError::Overflow(over)) => {
                let mut r = failed(Flag::UpstreamOverflow, format!("upstream overflow: {over}"));
                r.extensions_mut().insert(Overflowed);
                return r;
            }
            Err(SendError::Connect(e)) => {
                let mut r = failed(
                    Flag::UpstreamConnectFailure,
                    format!("upstream connect error: {e}"),
                );
                r.extensions_mut().insert(ConnectFailed);
                return r;
            }
            Err(e) => return failed(Flag::UpstreamReset, format!("upstream reset: {e}")),
        };
        let mut resp = resp;
        let mut slot = slot;
        if let Some(down_up) = downstream_upgrade
            && resp.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let up = hyper::upgrade::on(&mut resp);
            // The upgraded connection stays busy as long as the tunnel: it keeps the slot.
            let busy = slot.take();
            tokio::spawn(async move {
                let _busy = busy;
                match tokio::try_join!(down_up, up) {
                    Ok((d, u)) => {
                        let mut d = hyper_util::rt::TokioIo::new(d);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                            tracing::debug!("upgraded connection ended: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("upgrade failed: {e}"),
                }
            });
        }
        let resp = resp.map(body::incoming);
        match slot {
            Some(held) => resp.map(|b| body::guarded(b, held)),
            None => resp,
        }
    })
}

/// The request as the endpoint must see it: origin-form with a `Host` for HTTP/1.1,
/// absolute with `:authority` (and no `Host`) for HTTP/2.
fn for_upstream(req: &mut Request<Body>, proto: Proto, down: &Downstream) -> Result<(), String> {
    let authority = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| down.service_hostname.clone());
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match proto {
        Proto::Http1 => {
            *req.uri_mut() = Uri::from(pq);
            *req.version_mut() = Version::HTTP_11;
            if !req.headers().contains_key(HOST) {
                let v = HeaderValue::from_str(&authority).map_err(|e| e.to_string())?;
                req.headers_mut().insert(HOST, v);
            }
        }
        Proto::Http2 => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(Authority::try_from(authority).map_err(|e| e.to_string())?);
            parts.path_and_query = Some(pq);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|e| e.to_string())?;
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(HOST);
        }
    }
    Ok(())
}
