//! Inbound HBONE: mutual TLS as the destination workload, then one CONNECT per proxied
//! connection, each checked (target is a workload here, policy allows the source) before the
//! workload is dialled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, StatusCode};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use weft_core::hbone::client::connect_tcp;
use weft_core::hbone::server::{accept_mtls, parse_connect, respond, serve};
use weft_core::hbone::splice;
use weft_core::identity::SpiffeId;
use weft_core::telemetry::{AccessLog, ConnectionLabels, FailureReason, Reporter, SecurityPolicy};

use super::revocation::{ConnectionFacts, revoked};
use super::{Proxy, outbound::outcome, set_destination, set_source};

/// Serves one TCP connection accepted on a workload's HBONE address. The address it arrived on
/// names the workload, and so the certificate to present.
pub async fn handle_connection(
    px: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let Ok(local) = tcp.local_addr() else { return };
    let Some(served) = px
        .state
        .current()
        .workload_by_ip(local.ip())
        .filter(|w| w.node == px.node)
        .map(|w| w.identity.clone())
    else {
        tracing::debug!(%peer, %local, "HBONE connection to an address that is no workload here");
        return;
    };
    let cert = match px.certs.get(&served).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, identity = %served, "no certificate to serve HBONE: {e}");
            return;
        }
    };
    let (tls, source) = match accept_mtls(tcp, cert.server_config()).await {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::info!(%peer, %local, "{e}");
            return;
        }
    };
    let handler = {
        let px = px.clone();
        move |req, resp| stream(px.clone(), peer, source.clone(), served.clone(), req, resp)
    };
    if let Err(e) = serve(tls, &px.hbone, shutdown, &px.tracker, handler).await {
        tracing::debug!(%peer, "HBONE connection ended: {e}");
    }
}

/// One CONNECT stream.
async fn stream(
    px: Arc<Proxy>,
    peer: SocketAddr,
    source: SpiffeId,
    served: SpiffeId,
    req: Request<RecvStream>,
    resp: SendResponse<Bytes>,
) {
    let start = Instant::now();
    // Subscribe before deciding, so a policy change between the two is not missed.
    let changes = px.state.subscribe();
    let state = px.state.current();
    let mut labels = ConnectionLabels::new(Reporter::Destination);
    labels.connection_security_policy = SecurityPolicy::MutualTls;
    labels.source_principal = source.to_string();
    let refuse = |resp: SendResponse<Bytes>,
                  status: StatusCode,
                  why: &str,
                  labels: &ConnectionLabels,
                  reason| {
        let _ = respond(resp, status);
        px.metrics.failed(labels, reason);
        tracing::info!(%peer, source = %source, status = status.as_u16(), "refused CONNECT: {why}");
    };

    let connect = match parse_connect(&req) {
        Ok(c) => c,
        Err((status, why)) => {
            return refuse(resp, status, &why, &labels, FailureReason::BadRequest);
        }
    };
    // A waypoint's word on the original client is taken only from a waypoint of the target's
    // namespace (its instances' identities, from the mesh state): then destination policy
    // matches the real client. From anyone else the header is ignored.
    let tunnel = source.clone();
    let source = match &connect.original_principal {
        Some(original) => match state.workload_by_ip(connect.target.ip()) {
            Some(dst)
                if state.is_waypoint_of(&dst.namespace, &tunnel)
                    && original.trust_domain() == tunnel.trust_domain() =>
            {
                original.clone()
            }
            _ => {
                tracing::debug!(%peer, %tunnel, claimed = %original, "original principal ignored: the tunnel is not this namespace's waypoint");
                tunnel.clone()
            }
        },
        None => tunnel.clone(),
    };
    labels.source_principal = source.to_string();
    // `forwarded` is believed only when it does not contradict the certificate: an address of a
    // workload with another identity is a lie, and the connection's own peer is used instead.
    let peer_addr = SocketAddr::new(peer.ip(), 0);
    let client = match connect.client {
        Some(c) => match state.workload_by_ip(c.ip()) {
            Some(w) if w.identity != source => peer_addr,
            _ => c,
        },
        None => peer_addr,
    };
    let client_ip = client.ip();
    // Metric labels come from the mesh state only, never from request headers (`baggage`):
    // a peer must not be able to mint new series.
    labels.source_workload_namespace = source.namespace().to_string();
    if let Some(w) = state
        .workload_by_ip(client_ip)
        .filter(|w| w.identity == source)
    {
        set_source(&mut labels, w);
    }
    let Some(dst) = state
        .workload_by_ip(connect.target.ip())
        .filter(|w| w.node == px.node && w.identity == served)
        .cloned()
    else {
        let why = format!("{} is not a workload served here", connect.target);
        return refuse(
            resp,
            StatusCode::BAD_REQUEST,
            &why,
            &labels,
            FailureReason::BadRequest,
        );
    };
    set_destination(&mut labels, &dst);
    let service = state
        .service_of(connect.target)
        .map(|s| s.hostname.clone())
        .unwrap_or_default();
    if !service.is_empty() {
        labels.destination_service = service.clone();
    }
    let log = |sent, received, outcome: &str, labels: &ConnectionLabels| {
        AccessLog {
            direction: "inbound",
            src_addr: Some(client),
            src_workload: &format!(
                "{}/{}",
                labels.source_workload_namespace, labels.source_workload
            ),
            src_identity: &labels.source_principal,
            dst_addr: Some(connect.target),
            dst_workload: &dst.key(),
            dst_identity: &labels.destination_principal,
            dst_service: &service,
            bytes_sent: sent,
            bytes_received: received,
            duration: start.elapsed(),
            outcome,
        }
        .emit();
    };

    let facts = ConnectionFacts {
        source_principal: Some(source.to_string()),
        source_namespace: Some(source.namespace().to_string()),
        source_ip: client_ip,
        destination_ip: connect.target.ip(),
        destination_port: connect.target.port(),
    };
    let Some(decision) = facts.decide(&state) else {
        return;
    };
    for audit in &decision.audited {
        tracing::info!(target: "weft::audit", policy = %audit, src = %source, dst = %connect.target, "audit policy matched");
    }
    if !decision.allowed {
        let why = decision.to_string();
        refuse(
            resp,
            StatusCode::UNAUTHORIZED,
            &why,
            &labels,
            FailureReason::Denied,
        );
        return log(0, 0, &format!("denied: {why}"), &labels);
    }

    if let Some(why) = px.guard.refuse(connect.target, &state) {
        let why = format!("{} is {why}", connect.target);
        refuse(
            resp,
            StatusCode::BAD_REQUEST,
            &why,
            &labels,
            FailureReason::BadRequest,
        );
        return log(0, 0, &why, &labels);
    }
    drop(state);
    let dialled = tokio::time::timeout(
        px.hbone.connect_timeout,
        connect_tcp(connect.target, px.mark),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    let app = match dialled {
        Ok(app) => app,
        Err(e) => {
            let why = format!("connect {}: {e}", connect.target);
            refuse(
                resp,
                StatusCode::SERVICE_UNAVAILABLE,
                &why,
                &labels,
                FailureReason::Unreachable,
            );
            return log(0, 0, &why, &labels);
        }
    };
    let send = match respond(resp, StatusCode::OK) {
        Ok(Some(send)) => send,
        _ => return,
    };
    px.metrics.opened(&labels);
    let cancel = async {
        tokio::select! {
            _ = px.force_close.cancelled() => {}
            d = revoked(changes, facts.clone()) => {
                tracing::info!(src = %source, dst = %connect.target, "closing connection that policy now denies: {d}");
            }
        }
    };
    // On this side the TCP peer is the server: what splice sends is the response.
    let out = splice(app, send, req.into_body(), cancel).await;
    px.metrics.closed(&labels, out.received, out.sent);
    log(out.received, out.sent, &outcome(&out.end), &labels);
}
