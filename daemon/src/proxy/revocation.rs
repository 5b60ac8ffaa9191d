//! Closes connections that a new policy denies. Authorization is decided when a connection
//! opens; this re-decides it on every state change for as long as the connection lives.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use weft_core::authz::{ConnectionInfo, Decision, WorkloadRef};
use weft_core::model::MeshState;

/// The facts a decision was made on, owned so they outlive the request.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    pub source_principal: Option<String>,
    pub source_namespace: Option<String>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

impl ConnectionFacts {
    /// Decides for the destination workload at `destination_ip` in `state`; `None` when that
    /// workload is gone.
    pub fn decide(&self, state: &MeshState) -> Option<Decision> {
        let w = state.workload_by_ip(self.destination_ip)?;
        let info = ConnectionInfo {
            source_principal: self.source_principal.as_deref(),
            source_namespace: self.source_namespace.as_deref(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
        };
        let target = WorkloadRef {
            namespace: &w.namespace,
            labels: &w.labels,
        };
        Some(state.policies.evaluate(&target, &info))
    }
}

/// Completes when a state change makes the connection denied. Never completes otherwise.
pub async fn revoked(mut rx: watch::Receiver<Arc<MeshState>>, facts: ConnectionFacts) -> Decision {
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        let state = rx.borrow_and_update().clone();
        if let Some(d) = facts.decide(&state)
            && !d.allowed
        {
            return d;
        }
    }
}
