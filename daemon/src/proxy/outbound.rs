//! Outbound: a local workload opened a connection; find out who it is and where it was going,
//! then carry it over HBONE (meshed destination) or as plain TCP (anything else).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use weft_core::hbone::client::connect_tcp;
use weft_core::hbone::{
    ConnectRequest, HboneError, PoolKey, SpliceEnd, headers, splice, splice_tcp,
};
use weft_core::model::{Destination, Workload};
use weft_core::telemetry::{AccessLog, ConnectionLabels, FailureReason, Reporter, SecurityPolicy};

use super::{Proxy, set_destination, set_source};

/// Handles one connection accepted on the outbound listener. `peer` is the workload's address,
/// `original` where it was going (from the capture layer).
pub async fn handle(px: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, original: SocketAddr) {
    let start = Instant::now();
    let state = px.state.current();
    let mut labels = ConnectionLabels::new(Reporter::Source);
    let Some(src) = state
        .workload_by_ip(peer.ip())
        .filter(|w| w.node == px.node)
        .cloned()
    else {
        tracing::warn!(%peer, dst = %original, "refused outbound connection from an address that is no workload of this node");
        px.metrics.failed(&labels, FailureReason::UnknownSource);
        weft_core::hbone::splice::reset_tcp(&tcp);
        return;
    };
    set_source(&mut labels, &src);

    // Where the tunnel goes, when not to the target itself: a bound service's waypoint.
    let mut via_waypoint = None;
    let (target, dst, service) = match state.resolve(original) {
        Destination::Service { service, .. } if service.waypoint.is_some() => {
            labels.destination_service = service.hostname.clone();
            // Fail closed: a bound service is reached through its waypoint or not at all, so
            // its L7 policy can never be bypassed by the waypoint being down.
            let instance = state
                .waypoint_of(service)
                .and_then(|w| Some((w, w.ip_for(original)?)));
            let Some((wp, wp_ip)) = instance else {
                tracing::warn!(
                    src = %src.key(),
                    service = %service.key(),
                    waypoint = service.waypoint.as_deref().unwrap_or_default(),
                    "refused: the service's waypoint is missing or has no ready instance"
                );
                px.metrics.failed(&labels, FailureReason::NoWaypoint);
                weft_core::hbone::splice::reset_tcp(&tcp);
                return;
            };
            via_waypoint = Some(wp_ip);
            // `:authority` stays the service's VIP:port; the waypoint picks the endpoint.
            (original, Some(wp.clone()), service.hostname.clone())
        }
        Destination::Service {
            service,
            port,
            endpoint,
        } => {
            labels.destination_service = service.hostname.clone();
            let Some(ep) = endpoint else {
                tracing::warn!(src = %src.key(), service = %service.key(), "service has no endpoints");
                px.metrics.failed(&labels, FailureReason::Unreachable);
                weft_core::hbone::splice::reset_tcp(&tcp);
                return;
            };
            let ip = ep.ip_for(original).unwrap_or(original.ip());
            (
                SocketAddr::new(ip, port.target()),
                Some(ep.clone()),
                service.hostname.clone(),
            )
        }
        Destination::Workload(w) => (original, Some(w.clone()), String::new()),
        Destination::External => (original, None, String::new()),
    };
    if let Some(d) = &dst {
        set_destination(&mut labels, d);
    }
    let tunnel_ip = via_waypoint.unwrap_or(target.ip());
    if let Some(why) = px
        .guard
        .refuse(SocketAddr::new(tunnel_ip, target.port()), &state)
    {
        tracing::warn!(src = %src.key(), dst = %target, "refused outbound connection to {why}");
        px.metrics.failed(&labels, FailureReason::BadRequest);
        weft_core::hbone::splice::reset_tcp(&tcp);
        return;
    }
    // Nothing below needs the snapshot; long connections must not pin old states.
    let hbone_port = state.hbone_port;
    drop(state);
    let src_key = src.key();
    let dst_key = dst.as_ref().map(|d| d.key()).unwrap_or_default();
    let log = |sent: u64, received: u64, outcome: &str, labels: &ConnectionLabels| {
        AccessLog {
            direction: "outbound",
            src_addr: Some(peer),
            src_workload: &src_key,
            src_identity: &labels.source_principal,
            dst_addr: Some(target),
            dst_workload: &dst_key,
            dst_identity: if dst_key.is_empty() {
                ""
            } else {
                &labels.destination_principal
            },
            dst_service: &service,
            bytes_sent: sent,
            bytes_received: received,
            duration: start.elapsed(),
            outcome,
        }
        .emit();
    };

    // A waypoint is always reached over HBONE (its own pods are never captured, so they are
    // not "meshed" in the capture sense); never as plain TCP, which would skip it.
    match dst.filter(|d| via_waypoint.is_some() || d.is_meshed()) {
        Some(d) => {
            labels.connection_security_policy = SecurityPolicy::MutualTls;
            let tunnel = SocketAddr::new(tunnel_ip, hbone_port);
            hbone(&px, tcp, peer, target, tunnel, &src, &d, labels, log).await
        }
        None => passthrough(&px, tcp, target, labels, log).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn hbone(
    px: &Proxy,
    tcp: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    tunnel: SocketAddr,
    src: &Workload,
    dst: &Workload,
    labels: ConnectionLabels,
    log: impl Fn(u64, u64, &str, &ConnectionLabels),
) {
    let key = PoolKey {
        source: src.identity.clone(),
        destination: dst.identity.clone(),
        address: tunnel,
    };
    let req = ConnectRequest {
        authority: target,
        client: peer,
        baggage: headers::baggage(
            &src.namespace,
            &src.name,
            src.labels
                .get("app")
                .map(String::as_str)
                .unwrap_or(&src.name),
            src.labels
                .get("version")
                .map(String::as_str)
                .unwrap_or("latest"),
        ),
        traceparent: None,
        original_principal: None,
    };
    // What the workload sent before the tunnel was up goes out with the CONNECT.
    let (mut early_bytes, mut early_error) = (0u64, None);
    let early = || match weft_core::hbone::splice::read_now(&tcp) {
        Ok(data) => {
            early_bytes = data.as_ref().map_or(0, |d| d.len() as u64);
            data
        }
        Err(e) => {
            early_error = Some(e);
            None
        }
    };
    let stream = match px.pool.connect(&key, &req, early).await {
        Ok(s) => s,
        Err(e) => {
            let reason = match &e {
                HboneError::Status { status, .. } if status.as_u16() == 401 => {
                    FailureReason::Denied
                }
                HboneError::Status { status, .. } if status.as_u16() == 400 => {
                    FailureReason::BadRequest
                }
                HboneError::Identity { .. } => FailureReason::Identity,
                _ => FailureReason::Unreachable,
            };
            px.metrics.failed(&labels, reason);
            weft_core::hbone::splice::reset_tcp(&tcp);
            log(0, 0, &e.to_string(), &labels);
            return;
        }
    };
    px.metrics.opened(&labels);
    if let Some(e) = early_error {
        // The workload's side failed while the tunnel opened: dropping the stream resets it.
        weft_core::hbone::splice::reset_tcp(&tcp);
        px.metrics.closed(&labels, 0, 0);
        log(0, 0, &outcome(&SpliceEnd::Tcp(e.kind())), &labels);
        return;
    }
    let mut out = splice(tcp, stream.send, stream.recv, px.force_close.cancelled()).await;
    out.sent += early_bytes;
    px.metrics.closed(&labels, out.sent, out.received);
    log(out.sent, out.received, &outcome(&out.end), &labels);
}

async fn passthrough(
    px: &Proxy,
    tcp: TcpStream,
    target: SocketAddr,
    labels: ConnectionLabels,
    log: impl Fn(u64, u64, &str, &ConnectionLabels),
) {
    let upstream = match connect_tcp(target, px.mark).await {
        Ok(u) => u,
        Err(e) => {
            px.metrics.failed(&labels, FailureReason::Unreachable);
            weft_core::hbone::splice::reset_tcp(&tcp);
            log(0, 0, &format!("connect {target}: {e}"), &labels);
            return;
        }
    };
    px.metrics.opened(&labels);
    let out = splice_tcp(tcp, upstream, px.force_close.cancelled()).await;
    px.metrics.closed(&labels, out.sent, out.received);
    log(out.sent, out.received, &outcome(&out.end), &labels);
}

pub(crate) fn outcome(end: &SpliceEnd) -> String {
    match end {
        SpliceEnd::Closed => "ok".into(),
        SpliceEnd::Tcp(kind) => format!("tcp: {kind}"),
        SpliceEnd::Stream(e) => format!("stream: {e}"),
        SpliceEnd::Cancelled => "closed by weftd".into(),
    }
}
