//! The standalone mesh file as written by users: YAML, camelCase keys, unknown keys refused so
//! that a typo is an error and not a silently ignored setting.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::model::policy::AuthorizationPolicy;
use crate::model::route::Route;
use crate::model::traffic::TrafficPolicy;
use crate::model::{CaptureMode, InboundMode, ServicePort, TunnelProtocol};

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_ROOT_NAMESPACE: &str = "weft-system";
pub const DEFAULT_HBONE_PORT: u16 = 15008;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshFile {
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Policies in this namespace with no selector apply to the whole mesh.
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    #[serde(default = "default_hbone_port")]
    pub hbone_port: u16,
    #[serde(default)]
    pub ca: Option<CaFile>,
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
    /// Settings for every node `nodes` does not list (a DaemonSet's nodes), without `name`.
    #[serde(default)]
    pub node_defaults: Option<NodeFile>,
    #[serde(default)]
    pub workloads: Vec<WorkloadFile>,
    #[serde(default)]
    pub services: Vec<ServiceFile>,
    #[serde(default)]
    pub policies: Vec<AuthorizationPolicy>,
    /// HTTP and gRPC routes for waypoints (Gateway API rules; see `model::route`).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Load balancing, circuit breaking, outlier detection, faults and rate limits for
    /// waypoints (see `model::traffic`).
    #[serde(default)]
    pub traffic_policies: Vec<TrafficPolicy>,
}

/// Where the standalone CA lives. Relative paths are relative to the mesh file's directory.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaFile {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Intermediates between the issuing certificate and the root, when it is an intermediate.
    #[serde(default)]
    pub chain_file: Option<PathBuf>,
    /// Trust anchors; defaults to the issuing certificate when it is a root.
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
    #[serde(default = "default_leaf_lifetime", with = "duration")]
    pub leaf_lifetime: Duration,
}

/// Per-node settings, so that several weftd sharing one mesh file on one host (tests, the demo)
/// can each find their own listen addresses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeFile {
    /// Required in `nodes[]`; absent in `nodeDefaults`.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub capture: CaptureKind,
    /// Required when `capture: ebpf`.
    #[serde(default)]
    pub ebpf: Option<EbpfFile>,
    /// How long open connections may run after SIGTERM before they are closed.
    #[serde(default = "default_drain", with = "duration")]
    pub drain_period: Duration,
    #[serde(default)]
    pub hbone: HboneFile,
}

/// Tunnel timers. The defaults suit production; tests shorten them to watch them work.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HboneFile {
    /// A pooled connection with no stream for this long is closed.
    #[serde(default = "default_idle", with = "duration")]
    pub idle_timeout: Duration,
    /// How often an HBONE connection is PINGed...
    #[serde(default = "default_keepalive", with = "duration")]
    pub keepalive_interval: Duration,
    /// ...and how long a PONG may take before the peer is declared dead.
    #[serde(default = "default_keepalive", with = "duration")]
    pub keepalive_timeout: Duration,
    /// TCP + TLS + HTTP/2 handshake, and the wait for a CONNECT's answer.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for HboneFile {
    fn default() -> Self {
        HboneFile {
            idle_timeout: default_idle(),
            keepalive_interval: default_keepalive(),
            keepalive_timeout: default_keepalive(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

/// How weftd learns where a captured connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CaptureKind {
    /// No transparent capture: the client states the destination with a PROXY protocol header
    /// on the outbound and plaintext-inbound listeners, and the HBONE server binds each local
    /// workload's address. For tests, and for hosts where eBPF capture is not installed.
    #[default]
    None,
    /// Transparent capture with eBPF (see `ebpf`): outbound connects of enrolled pods are
    /// redirected to weftd, inbound connections to them are steered to its transparent
    /// listeners.
    Ebpf,
}

/// Settings of eBPF capture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EbpfFile {
    /// The cgroup2 directory whose processes (the pods) are captured. Default: the cgroup2 root.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The node-side address the pods reach weftd at (their gateway, e.g. the host veth IP);
    /// captured connections are rewritten to it, port `listen.outbound`. Absent (`0.0.0.0`):
    /// the node's own IP, given to weftd with `--node-ip` (a DaemonSet's `status.hostIP`),
    /// which every pod can reach whatever the CNI.
    #[serde(default = "unspecified")]
    pub redirect_address: std::net::Ipv4Addr,
    /// SO_MARK of weftd's own connections, so capture never takes them.
    #[serde(default = "default_weftd_mark")]
    pub mark: u32,
    /// The node's uplinks: interfaces HBONE from other nodes arrives on. The inbound classifier
    /// is attached to them as well as to every local pod's interface.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// bpffs directory where capture pins its maps and links, so capture outlives a weftd
    /// restart (failing closed meanwhile) and the next weftd takes it over. One per node.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
}

fn unspecified() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::UNSPECIFIED
}

fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/weft")
}

fn default_weftd_mark() -> u32 {
    0x539
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenFile {
    #[serde(default = "default_outbound")]
    pub outbound: SocketAddr,
    #[serde(default = "default_plaintext_port")]
    pub inbound_plaintext_port: u16,
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    #[serde(default = "default_metrics")]
    pub metrics: SocketAddr,
    #[serde(default = "default_readiness")]
    pub readiness: SocketAddr,
}

impl Default for ListenFile {
    fn default() -> Self {
        ListenFile {
            outbound: default_outbound(),
            inbound_plaintext_port: default_plaintext_port(),
            admin: default_admin(),
            metrics: default_metrics(),
            readiness: default_readiness(),
        }
    }
}

impl NodeFile {
    pub fn with_defaults(name: &str) -> Self {
        NodeFile {
            name: name.to_string(),
            listen: ListenFile::default(),
            capture: CaptureKind::default(),
            ebpf: None,
            drain_period: default_drain(),
            hbone: HboneFile::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadFile {
    pub name: String,
    /// What it is an instance of (a Deployment's name), as metrics label it: one series per
    /// workload, not per pod. Defaults to `name`.
    #[serde(default)]
    pub workload_name: Option<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_namespace")]
    pub service_account: String,
    /// Defaults to `namespace/name`.
    #[serde(default)]
    pub uid: Option<String>,
    pub ips: Vec<IpAddr>,
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: CaptureMode,
    #[serde(default)]
    pub tunnel: TunnelProtocol,
    #[serde(default)]
    pub inbound: InboundMode,
    #[serde(default)]
    pub waypoint: Option<String>,
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceFile {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Defaults to `<name>.<namespace>.svc.<trust domain>`.
    #[serde(default)]
    pub hostname: Option<String>,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Endpoints are the workloads of the service's namespace carrying all these labels...
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// ...or are listed by name (`name` in the service's namespace, or `namespace/name`).
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    #[serde(default)]
    pub waypoint: Option<String>,
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.into()
}
fn default_root_namespace() -> String {
    DEFAULT_ROOT_NAMESPACE.into()
}
fn default_hbone_port() -> u16 {
    DEFAULT_HBONE_PORT
}
fn default_namespace() -> String {
    "default".into()
}
fn default_leaf_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_outbound() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15001))
}
fn default_plaintext_port() -> u16 {
    15006
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_metrics() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15020))
}
fn default_readiness() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15021))
}

/// Parses `24h`, `10s`, `500ms`, `3650days`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses a percentage from 0 to 100 (`1`, `0.5`, `100`).
pub fn parse_percentage(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

/// Durations are written the human way: `24h`, `10s`, `500ms`.
mod duration {
    use super::*;
    use serde::Serializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
