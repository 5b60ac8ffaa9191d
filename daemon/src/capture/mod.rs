//! Where a captured connection was going: the seam between the listeners and the capture layer.
//!
//! Listeners accept connections; a [`DestinationSource`] tells each one its original
//! destination. Today the only source is explicit: the client states it with a PROXY protocol
//! header (for tests and hosts without eBPF capture). Transparent capture with eBPF adds a
//! second source that reads the BPF maps, behind the same call.

pub mod bpf;
pub mod check;
pub mod ebpf;
pub mod netlink;
pub mod pin;
pub mod podns;
pub mod proxy_protocol;
pub mod stats;
pub mod uninstall;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// How the listeners of this node learn original destinations.
#[derive(Clone)]
pub enum DestinationSource {
    /// The client sends a PROXY protocol (v1 or v2) header first; its destination is taken,
    /// its source is ignored (the real peer address is the source).
    ProxyProtocol { timeout: Duration },
    /// eBPF capture: the map the capture programs fill, keyed by the pod's address.
    Ebpf(std::sync::Arc<ebpf::OriginalDestinations>),
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("reading the original destination: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("bad PROXY header: {0}")]
    Malformed(String),
}

impl DestinationSource {
    /// The original destination of `tcp`. May consume bytes that belong to the capture
    /// protocol (the PROXY header), never application bytes.
    pub async fn original_destination(
        &self,
        tcp: &mut TcpStream,
    ) -> Result<SocketAddr, DestinationError> {
        match self {
            &DestinationSource::ProxyProtocol { timeout } => {
                tokio::time::timeout(timeout, proxy_protocol::read_destination(tcp))
                    .await
                    .map_err(|_| DestinationError::Timeout(timeout))?
            }
            DestinationSource::Ebpf(map) => Ok(map.lookup(tcp.peer_addr()?)?),
        }
    }
}
