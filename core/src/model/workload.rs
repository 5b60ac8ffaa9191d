//! A workload: one pod (or, in standalone mode, one network namespace standing in for a pod).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::identity::{SpiffeError, SpiffeId};

/// Whether weft captures the workload's traffic. `None` workloads are still known to the mesh
/// (so policies can name them and services can list them as endpoints) but talk plain TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    #[default]
    Ambient,
    None,
}

/// How traffic reaches the workload: through its node's HBONE server, or as plain TCP
/// (for workloads whose node runs no mesh agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    #[default]
    Hbone,
    Tcp,
}

/// What the workload accepts from outside the mesh (Istio's PeerAuthentication mode).
/// STRICT is the default because plaintext is the exception a user opts into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    #[default]
    Strict,
    Permissive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    /// What it is an instance of (a Deployment's name): the `*_workload` metric labels.
    pub workload_name: String,
    pub namespace: String,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub mode: CaptureMode,
    pub tunnel: TunnelProtocol,
    pub inbound: InboundMode,
    pub waypoint: Option<String>,
    /// Standalone mode only: the network namespace that stands in for the pod.
    pub netns: Option<PathBuf>,
    /// The workload's SPIFFE identity, derived once at load time.
    pub identity: SpiffeId,
}

impl Workload {
    pub fn identity_for(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::new(trust_domain, namespace, service_account)
    }

    /// Meshed workloads are reached over HBONE and carry an identity on the wire.
    pub fn is_meshed(&self) -> bool {
        self.mode == CaptureMode::Ambient && self.tunnel == TunnelProtocol::Hbone
    }

    /// The address to reach it at for a connection to `like`: one of the same family if it has
    /// one, else its first (dual-stack pods list both). `None` only for a workload without
    /// addresses, which the sources never produce.
    pub fn ip_for(&self, like: std::net::SocketAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .find(|ip| ip.is_ipv4() == like.is_ipv4())
            .or(self.ips.first())
            .copied()
    }

    /// `namespace/name`, the form used in logs and metrics.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
