//! Upstream: the endpoint a CONNECT goes to, reached over HBONE with the waypoint's own
//! identity when it is meshed (the destination node then sees the waypoint as the source), or
//! as plain TCP when it is not.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use tokio::net::TcpStream;
use weft_core::hbone::client::connect_tcp;
use weft_core::hbone::{ConnectRequest, HboneError, PoolKey, PooledStream};
use weft_core::model::Workload;
use weft_core::telemetry::{ConnectionLabels, FailureReason};

use crate::Waypoint;

/// The endpoint chosen for one connection.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// Shared with the mesh state: choosing is per request and must not copy the workload.
    pub workload: Arc<Workload>,
    /// The endpoint's address and target port.
    pub address: SocketAddr,
    /// Where its node's HBONE server is, when it is meshed.
    pub hbone: Option<SocketAddr>,
}

impl Chosen {
    pub fn identity_label(&self) -> String {
        if self.hbone.is_some() {
            self.workload.identity.to_string()
        } else {
            String::new()
        }
    }
}

/// The endpoint's address in the client's address family, at the service port's target port.
pub fn choose(
    ep: &Arc<Workload>,
    target_port: u16,
    original: SocketAddr,
    hbone_port: u16,
) -> Chosen {
    // The sources never produce a workload without addresses; should one appear, the dial to
    // the original address fails rather than the process panicking.
    let ip = ep.ip_for(original).unwrap_or(original.ip());
    Chosen {
        workload: ep.clone(),
        address: SocketAddr::new(ip, target_port),
        hbone: ep.is_meshed().then(|| SocketAddr::new(ip, hbone_port)),
    }
}

pub fn set_destination(l: &mut ConnectionLabels, c: &Chosen) {
    l.destination_workload = c.workload.workload_name.clone();
    l.destination_workload_namespace = c.workload.namespace.clone();
    l.destination_principal = c.identity_label();
}

pub enum Upstream {
    Hbone(PooledStream),
    Tcp(TcpStream),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error("connect {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub fn failure_reason(e: &UpstreamError) -> FailureReason {
    match e {
        UpstreamError::Hbone(HboneError::Status { status, .. }) if status.as_u16() == 401 => {
            FailureReason::Denied
        }
        UpstreamError::Hbone(HboneError::Identity { .. }) => FailureReason::Identity,
        _ => FailureReason::Unreachable,
    }
}

/// Opens the upstream side: a CONNECT to the endpoint through its node, carrying the original
/// client's address and baggage, or a TCP connection.
pub async fn open(
    wp: &Waypoint,
    chosen: &Chosen,
    client: SocketAddr,
    on_behalf_of: Option<&weft_core::identity::SpiffeId>,
    baggage: Option<HeaderValue>,
) -> Result<Upstream, UpstreamError> {
    let Some(hbone) = chosen.hbone else {
        let dial =
            tokio::time::timeout(wp.hbone.connect_timeout, connect_tcp(chosen.address, None));
        let tcp = match dial.await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        }
        .map_err(|source| UpstreamError::Tcp {
            addr: chosen.address,
            source,
        })?;
        return Ok(Upstream::Tcp(tcp));
    };
    let key = PoolKey {
        source: wp.identity.clone(),
        destination: chosen.workload.identity.clone(),
        address: hbone,
    };
    let req = ConnectRequest {
        authority: chosen.address,
        client,
        baggage,
        traceparent: None,
        original_principal: on_behalf_of.and_then(|id| HeaderValue::from_str(&id.to_string()).ok()),
    };
    Ok(Upstream::Hbone(wp.pool.connect(&key, &req, || None).await?))
}
