//! Targets weftd never dials: its own listeners. A client that could make weftd connect to
//! itself would re-enter the proxy with weftd's (or a workload's) address as its source, which
//! launders identity and source IP past policy, or reach the loopback-only admin API.

use std::net::SocketAddr;

use weft_core::model::MeshState;

pub struct SelfGuard {
    /// Outbound, admin, metrics, readiness.
    pub listeners: Vec<SocketAddr>,
    pub plaintext_port: u16,
    pub node: String,
}

impl SelfGuard {
    /// Why `target` must not be dialled, if it must not.
    pub fn refuse(&self, target: SocketAddr, state: &MeshState) -> Option<&'static str> {
        let ip = target.ip();
        if ip.is_unspecified() || ip.is_multicast() {
            return Some("not a unicast address");
        }
        let local = ip.is_loopback()
            || state
                .workload_by_ip(ip)
                .is_some_and(|w| w.node == self.node);
        if local && (target.port() == state.hbone_port || target.port() == self.plaintext_port) {
            return Some("a mesh listener of this node");
        }
        let own = self.listeners.iter().any(|l| {
            l.port() == target.port()
                && (l.ip() == ip || (l.ip().is_unspecified() && ip.is_loopback()))
        });
        own.then_some("a listener of weftd itself")
    }
}
