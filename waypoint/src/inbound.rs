//! HBONE in: mutual TLS as the waypoint's own identity, then one CONNECT per proxied
//! connection. Each CONNECT names a service's VIP:port; the waypoint serves only the services
//! bound to it (`weft.dev/use-waypoint`). HTTP (by `appProtocol` or detected) is served by
//! the L7 layers ([`crate::http`]); anything else is carried to an endpoint as TCP
//! ([`crate::upstream`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use weft_core::hbone::server::{accept_mtls, parse_connect, respond, serve};
use weft_core::hbone::{SpliceOutcome, StreamIo};
use weft_core::identity::SpiffeId;
use weft_core::model::{Destination, MeshState};
use weft_core::telemetry::{ConnectionLabels, FailureReason, Reporter, SecurityPolicy};

use crate::Waypoint;
use crate::http::Downstream;
use crate::protocol::{self, Mode};
use crate::upstream::{self, Chosen, Upstream};

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
        let (wp, stop) = (wp.clone(), shutdown.clone());
        move |req, resp| stream(wp.clone(), peer, source.clone(), req, resp, stop.clone())
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
    shutdown: CancellationToken,
) {
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
    let Destination::Service { service, port, .. } = state.resolve(target.target) else {
        wp.metrics.failed(&labels, FailureReason::BadRequest);
        return refuse(
            resp,
            StatusCode::BAD_REQUEST,
            format!("{} is not a service's address", target.target),
        );
    };
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
    let source_workload = state
        .workload_by_ip(client.ip())
        .filter(|w| w.identity == source)
        .map(|w| (w.workload_name.clone(), w.namespace.clone()));
    if let Some((name, _)) = &source_workload {
        labels.source_workload = name.clone();
    }
    let mode = protocol::mode(port.app_protocol.as_deref());
    let down = Arc::new(Downstream {
        source: source.clone(),
        source_principal: labels.source_principal.clone(),
        client,
        source_workload,
        service_namespace: Arc::from(service.namespace.as_str()),
        service_name: Arc::from(service.name.as_str()),
        service_hostname: service.hostname.clone(),
        vip: target.target,
        series: Default::default(),
    });
    drop(state);
    let baggage = target.baggage.clone();
    let tcp = Relay {
        wp: wp.clone(),
        down: down.clone(),
        labels,
        baggage,
    };
    if mode == Mode::Tcp {
        // Refused before the tunnel is up, so the node sees why.
        let (chosen, up) = match tcp.open().await {
            Ok(opened) => opened,
            Err((status, why)) => return refuse(resp, status, why),
        };
        let Ok(Some(send)) = respond(resp, StatusCode::OK) else {
            return;
        };
        return tcp
            .carry(chosen, up, (send, req.into_body()), Bytes::new())
            .await;
    }
    let Ok(Some(send)) = respond(resp, StatusCode::OK) else {
        return;
    };
    let mut recv = req.into_body();
    let (first, http) = match mode {
        Mode::Detect => protocol::detect(&mut recv).await,
        _ => (Bytes::new(), true),
    };
    if http {
        let io = StreamIo::new(send, recv).with_prefix(first);
        return crate::http::serve(wp, io, down, shutdown).await;
    }
    match tcp.open().await {
        Ok((chosen, up)) => tcp.carry(chosen, up, (send, recv), first).await,
        Err((_, why)) => {
            // The tunnel is already up: a reset is the only way left to say no.
            tracing::info!(%peer, %source, "closing detected TCP connection: {why}");
            let mut send = send;
            send.send_reset(h2::Reason::REFUSED_STREAM);
        }
    }
}

/// A connection carried as TCP to an endpoint of the service.
struct Relay {
    wp: Arc<Waypoint>,
    down: Arc<Downstream>,
    labels: ConnectionLabels,
    baggage: Option<http::HeaderValue>,
}

impl Relay {
    /// Authorizes the connection by the policies attached to the service or the waypoint (their
    /// L4 view: TCP has no HTTP attributes), picks an endpoint and opens the upstream, or says
    /// why not.
    async fn open(&self) -> Result<(Chosen, Upstream), (StatusCode, String)> {
        let wp = &self.wp;
        let state: Arc<MeshState> = wp.state.current();
        let d = &self.down;
        let fail = |reason, status, why: String| {
            wp.metrics.failed(&self.labels, reason);
            Err((status, why))
        };
        let conn = weft_core::authz::ConnectionInfo {
            source_principal: Some(&d.source_principal),
            source_namespace: Some(d.source.namespace()),
            source_ip: d.client.ip(),
            destination_ip: d.vip.ip(),
            destination_port: d.vip.port(),
        };
        let decision = state.policies.evaluate_waypoint_tcp(
            &d.service_namespace,
            &d.service_name,
            &wp.name,
            &conn,
        );
        if !decision.allowed {
            return fail(
                FailureReason::Denied,
                StatusCode::FORBIDDEN,
                format!("{}/{}: {decision}", d.service_namespace, d.service_name),
            );
        }
        let Destination::Service { port, endpoint, .. } = state.resolve(d.vip) else {
            return fail(
                FailureReason::BadRequest,
                StatusCode::BAD_REQUEST,
                format!("{} is no longer a service", d.vip),
            );
        };
        let Some(ep) = endpoint else {
            return fail(
                FailureReason::Unreachable,
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service {}/{} has no endpoints",
                    d.service_namespace, d.service_name
                ),
            );
        };
        let chosen = upstream::choose(ep, port.target(), d.vip, state.hbone_port);
        drop(state);
        match upstream::open(wp, &chosen, d.client, Some(&d.source), self.baggage.clone()).await {
            Ok(up) => Ok((chosen, up)),
            Err(e) => fail(
                upstream::failure_reason(&e),
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ),
        }
    }

    async fn carry(
        mut self,
        chosen: Chosen,
        up: Upstream,
        down: (h2::SendStream<Bytes>, RecvStream),
        first: Bytes,
    ) {
        let start = Instant::now();
        let wp = self.wp.clone();
        upstream::set_destination(&mut self.labels, &chosen);
        wp.metrics.opened(&self.labels);
        let sent_first = first.len() as u64;
        let out: SpliceOutcome = match up {
            Upstream::Hbone(mut stream) => {
                if !first.is_empty() && stream.send.send_data(first, false).is_err() {
                    return;
                }
                let (send, recv) = (stream.send, stream.recv);
                weft_core::hbone::splice_streams(down, (send, recv), wp.force_close.cancelled())
                    .await
            }
            Upstream::Tcp(mut tcp) => {
                if !first.is_empty() && tcp.write_all(&first).await.is_err() {
                    return;
                }
                let (send, recv) = down;
                // The TCP helper counts from the socket's side: swap to keep `sent`
                // downstream-to-upstream.
                let mut o =
                    weft_core::hbone::splice(tcp, send, recv, wp.force_close.cancelled()).await;
                std::mem::swap(&mut o.sent, &mut o.received);
                o
            }
        };
        let sent = out.sent + sent_first;
        wp.metrics.closed(&self.labels, sent, out.received);
        tracing::info!(
            target: "weft::access",
            direction = "waypoint",
            protocol = "tcp",
            src = %self.down.client,
            src_identity = %self.down.source,
            dst = %chosen.address,
            dst_identity = %chosen.identity_label(),
            dst_service = %self.labels.destination_service,
            bytes_sent = sent,
            bytes_received = out.received,
            duration_ms = start.elapsed().as_millis() as u64,
            outcome = ?out.end,
        );
    }
}
