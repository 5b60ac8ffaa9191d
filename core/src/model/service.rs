//! A service: virtual IPs and ports in front of a set of workload endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    /// The port the endpoints listen on; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// `tcp`, `http`, `http2`, `grpc`: used by waypoints later, kept so configs carry it now.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub selector: Option<BTreeMap<String, String>>,
    pub waypoint: Option<String>,
    /// Endpoints as indexes into the state's workload list, resolved once per reload.
    #[serde(skip)]
    pub endpoints: Vec<usize>,
    /// Endpoint workload keys (`namespace/name`), for config dumps.
    pub endpoint_names: Vec<String>,
}

impl Service {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}
