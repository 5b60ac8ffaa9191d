//! Inbound plaintext (15006): clients outside the mesh reaching a local workload. Only
//! PERMISSIVE workloads accept them, and only when policy allows an unauthenticated source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use weft_core::hbone::client::connect_tcp;
use weft_core::hbone::splice::reset_tcp;
use weft_core::hbone::splice_tcp;
use weft_core::model::InboundMode;
use weft_core::telemetry::{AccessLog, ConnectionLabels, FailureReason, Reporter};

use super::outbound::outcome;
use super::revocation::{ConnectionFacts, revoked};
use super::{Proxy, set_destination};

pub async fn handle(px: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, original: SocketAddr) {
    let start = Instant::now();
    let changes = px.state.subscribe();
    let state = px.state.current();
    let mut labels = ConnectionLabels::new(Reporter::Destination);
    // The listener is bound on one workload's address: that workload, and only it, is the
    // destination, whatever the header claims.
    let arrived_on = tcp.local_addr().map(|a| a.ip()).ok();
    if arrived_on != Some(original.ip()) || px.guard.refuse(original, &state).is_some() {
        tracing::info!(%peer, dst = %original, "plaintext connection naming another destination than the one it reached");
        px.metrics.failed(&labels, FailureReason::BadRequest);
        reset_tcp(&tcp);
        return;
    }
    let Some(dst) = state
        .workload_by_ip(original.ip())
        .filter(|w| w.node == px.node)
        .cloned()
    else {
        tracing::info!(%peer, dst = %original, "plaintext connection to an address that is no workload here");
        px.metrics.failed(&labels, FailureReason::BadRequest);
        reset_tcp(&tcp);
        return;
    };
    set_destination(&mut labels, &dst);
    let log = |sent, received, outcome: &str| {
        AccessLog {
            direction: "inbound-plaintext",
            src_addr: Some(peer),
            dst_addr: Some(original),
            dst_workload: &dst.key(),
            dst_identity: &labels.destination_principal,
            bytes_sent: sent,
            bytes_received: received,
            duration: start.elapsed(),
            outcome,
            ..Default::default()
        }
        .emit();
    };
    if dst.inbound == InboundMode::Strict {
        px.metrics.failed(&labels, FailureReason::PlaintextRefused);
        reset_tcp(&tcp);
        return log(0, 0, "refused: workload accepts mutual TLS only (STRICT)");
    }
    let facts = ConnectionFacts {
        source_principal: None,
        source_namespace: None,
        source_ip: peer.ip(),
        destination_ip: original.ip(),
        destination_port: original.port(),
    };
    match facts.decide(&state) {
        Some(d) if d.allowed => {}
        Some(d) => {
            px.metrics.failed(&labels, FailureReason::Denied);
            reset_tcp(&tcp);
            return log(0, 0, &format!("denied: {d}"));
        }
        None => return,
    }
    drop(state);
    let app = match connect_tcp(original, px.mark).await {
        Ok(a) => a,
        Err(e) => {
            px.metrics.failed(&labels, FailureReason::Unreachable);
            reset_tcp(&tcp);
            return log(0, 0, &format!("connect {original}: {e}"));
        }
    };
    px.metrics.opened(&labels);
    let cancel = async {
        tokio::select! {
            _ = px.force_close.cancelled() => {}
            d = revoked(changes, facts) => {
                tracing::info!(%peer, dst = %original, "closing plaintext connection that policy now denies: {d}");
            }
        }
    };
    // The client is splice's side `a`: `sent` is the request.
    let out = splice_tcp(tcp, app, cancel).await;
    let (sent, received, outcome) = (out.sent, out.received, outcome(&out.end));
    px.metrics.closed(&labels, sent, received);
    log(sent, received, &outcome);
}
