//! HBONE in: mutual TLS as the waypoint's own identity, then one CONNECT per proxied
//! connection. Each CONNECT names a service's VIP:port; the waypoint serves only the services
//! bound to it (`weft.dev/use-waypoint`), picks an endpoint and carries the stream on
//! ([`crate::upstream`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, StatusCode};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use weft_core::hbone::server::{accept_mtls, parse_connect, respond, serve};
use weft_core::identity::SpiffeId;
use weft_core::model::Destination;
use weft_core::telemetry::{ConnectionLabels, FailureReason, Reporter, SecurityPolicy};

use crate::Waypoint;
use crate::upstream::{self, Upstream};

/// Serves one TCP connection accepted on the HBONE port.
pub async fn handle_connection(
    wp: Arc<Waypoint>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let cert = match wp.certs.get(&wp.identity).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, "no certificate to serve HBONE: {e}");
            return;
        }
    };
    let (tls, source) = match accept_mtls(tcp, cert.server_config()).await {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::info!(%peer, "{e}");
            return;
        }
    };
    let handler = {
        let wp = wp.clone();
        move |req, resp| stream(wp.clone(), peer, source.clone(), req, resp)
    };
    if let Err(e) = serve(tls, &wp.hbone, shutdown, &wp.tracker, handler).await {
        tracing::debug!(%peer, "HBONE connection ended: {e}");
    }
}

/// One CONNECT.
async fn stream(
    wp: Arc<Waypoint>,
    peer: SocketAddr,
    source: SpiffeId,
    req: Request<RecvStream>,
    resp: SendResponse<Bytes>,
) {
    let start = Instant::now();
    let mut labels = ConnectionLabels::new(Reporter::Waypoint);
    labels.source_principal = source.to_string();
    labels.source_workload_namespace = source.namespace().to_owned();
    labels.connection_security_policy = SecurityPolicy::MutualTls;
    let refuse = |resp: SendResponse<Bytes>, status: StatusCode, why: String| {
        tracing::info!(%peer, %source, "refused CONNECT: {why}");
        let _ = respond(resp, status);
    };
    let target = match parse_connect(&req) {
        Ok(t) => t,
        Err((status, why)) => {
            wp.metrics.failed(&labels, FailureReason::BadRequest);
            return refuse(resp, status, why);
        }
    };
    let state = wp.state.current();
    let chosen = match state.resolve(target.target) {
        Destination::Service {
            service,
            port,
            endpoint,
        } => {
            labels.destination_service = service.hostname.clone();
            // A waypoint serves its own namespace's services that name it; another namespace's
            // waypoint of the same name is not this one.
            let bound = service.waypoint.as_deref() == Some(wp.name.as_str())
                && service.namespace == wp.identity.namespace();
            if !bound {
                wp.metrics.failed(&labels, FailureReason::BadRequest);
                return refuse(
                    resp,
                    StatusCode::FORBIDDEN,
                    format!(
                        "service {} is not bound to waypoint {}/{}",
                        service.key(),
                        wp.identity.namespace(),
                        wp.name
                    ),
                );
            }
            // Policies attached to the service (targetRefs) are the waypoint's to enforce, and
            // the nodes skip them. Until the waypoint evaluates them, a service with any is
            // refused rather than served without them.
            if let Some(p) = state
                .policies
                .attached_to(&service.namespace, &service.name)
                .next()
            {
                wp.metrics.failed(&labels, FailureReason::Denied);
                return refuse(
                    resp,
                    StatusCode::FORBIDDEN,
                    format!(
                        "service {} has policy {}/{} attached, which this waypoint cannot enforce yet",
                        service.key(),
                        p.namespace,
                        p.name
                    ),
                );
            }
            let Some(ep) = endpoint else {
                wp.metrics.failed(&labels, FailureReason::Unreachable);
                return refuse(
                    resp,
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("service {} has no endpoints", service.key()),
                );
            };
            upstream::choose(ep, port.target(), target.target, state.hbone_port)
        }
        _ => {
            wp.metrics.failed(&labels, FailureReason::BadRequest);
            return refuse(
                resp,
                StatusCode::BAD_REQUEST,
                format!("{} is not a service's address", target.target),
            );
        }
    };
    // `forwarded` is believed only when it does not contradict the certificate, as weftd's
    // inbound does: an address of a workload with another identity is a lie.
    let peer_addr = SocketAddr::new(peer.ip(), 0);
    let client = match target.client {
        Some(c) => match state.workload_by_ip(c.ip()) {
            Some(w) if w.identity != source => peer_addr,
            _ => c,
        },
        None => peer_addr,
    };
    drop(state);
    upstream::set_destination(&mut labels, &chosen);
    let up = match upstream::open(&wp, &chosen, client, target.baggage.clone()).await {
        Ok(up) => up,
        Err(e) => {
            wp.metrics.failed(&labels, upstream::failure_reason(&e));
            return refuse(resp, StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
    };
    let down_send = match respond(resp, StatusCode::OK) {
        Ok(Some(send)) => send,
        _ => return,
    };
    wp.metrics.opened(&labels);
    let down = (down_send, req.into_body());
    let out = match up {
        Upstream::Hbone(stream) => {
            let (send, recv) = (stream.send, stream.recv);
            weft_core::hbone::splice_streams(down, (send, recv), wp.force_close.cancelled()).await
        }
        Upstream::Tcp(tcp) => {
            let (send, recv) = down;
            // The TCP helper counts from the socket's side: swap to keep `sent` downstream-to-upstream.
            let mut o = weft_core::hbone::splice(tcp, send, recv, wp.force_close.cancelled()).await;
            std::mem::swap(&mut o.sent, &mut o.received);
            o
        }
    };
    wp.metrics.closed(&labels, out.sent, out.received);
    tracing::info!(
        target: "weft::access",
        direction = "waypoint",
        src = %client,
        src_identity = %source,
        dst = %chosen.address,
        dst_identity = %chosen.identity_label(),
        dst_service = %labels.destination_service,
        bytes_sent = out.sent,
        bytes_received = out.received,
        duration_ms = start.elapsed().as_millis() as u64,
        outcome = ?out.end,
    );
}
