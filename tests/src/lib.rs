//! Harness for the end-to-end tests: a mesh file with its own CA in a temporary directory,
//! real `weftd` processes as nodes, real TCP servers and clients as workloads.
//!
//! Every address is on loopback: test `id` owns `127.<id>.0.0/16`, node `n` owns
//! `127.<id>.<n>.0/24` (pods at `.1`.., the node's own listeners at `.250`), so tests run in
//! parallel without sharing a port.

pub mod cluster;
pub mod grpc_app;
pub mod http_app;
pub mod netns;
pub mod otlp;
pub mod traffic;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The weftd binary under test: `$WEFTD`, else the workspace's debug build.
pub fn weftd_bin() -> PathBuf {
    binary("WEFTD", "weftd", "weftd")
}

/// The weft-waypoint binary under test: `$WEFT_WAYPOINT`, else the debug build.
pub fn waypoint_bin() -> PathBuf {
    binary("WEFT_WAYPOINT", "weft-waypoint", "weft-waypoint")
}

/// The weft-controller binary under test: `$WEFT_CONTROLLER`, else the debug build.
pub fn controller_bin() -> PathBuf {
    binary("WEFT_CONTROLLER", "weft-controller", "weft-controller")
}

fn binary(env: &str, name: &str, package: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p {package}` (or set {env})",
        bin.display()
    );
    bin
}

/// Tests that need root (BPF, namespaces) call this first: without root they are skipped with
/// the reason, except under CI (`CI=true`), where not running them is a failure.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = format!("{test} needs root (BPF programs, mounts, network namespaces)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI must run it as root");
    }
    eprintln!("skipped: {why}");
    false
}

pub fn ip(id: u8, node: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, id, node, host))
}

/// The listen addresses of node `n` of test `id`.
#[derive(Debug, Clone, Copy)]
pub struct NodeAddrs {
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

impl NodeAddrs {
    pub fn new(id: u8, n: u8) -> Self {
        let a = ip(id, n, 250);
        NodeAddrs {
            outbound: SocketAddr::new(a, 15001),
            admin: SocketAddr::new(a, 15000),
            metrics: SocketAddr::new(a, 15020),
            readiness: SocketAddr::new(a, 15021),
        }
    }
}

/// A workload entry for the mesh file.
pub fn workload(name: &str, sa: &str, ip: IpAddr, node: &str) -> Value {
    json!({"name": name, "namespace": "default", "serviceAccount": sa, "ips": [ip.to_string()],
           "node": node, "labels": {"app": name}})
}

/// The mesh most tests start from: `sleep` on node1 (127.id.1.1), `echo` on node2 (127.id.2.1)
/// behind the service `echo` at [`echo_vip`] (port 80 -> 8080).
pub fn sleep_echo(id: u8) -> Mesh {
    let mut m = Mesh::new(id, 2).expect("test mesh");
    m.workloads
        .push(workload("sleep", "sleep", ip(id, 1, 1), "node1"));
    m.workloads
        .push(workload("echo", "echo", ip(id, 2, 1), "node2"));
    m.services.push(
        json!({"name": "echo", "vips": [echo_vip(id).ip().to_string()],
        "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "echo"}}),
    );
    m
}

/// Where the `echo` workload of [`sleep_echo`] serves: its own address, port 8080.
pub fn echo_addr(id: u8) -> SocketAddr {
    SocketAddr::new(ip(id, 2, 1), 8080)
}

pub fn echo_vip(id: u8) -> SocketAddr {
    SocketAddr::new(ip(id, 0, 100), 80)
}

/// Writes `msg` and expects the same bytes back within 5 s (from an echo server).
pub async fn round_trip(tcp: &mut TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    tcp.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got)).await??;
    anyhow::ensure!(
        got == msg,
        "echo mismatch: {:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

/// A test mesh: a directory holding the CA and the mesh file.
pub struct Mesh {
    pub id: u8,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<String>,
    pub leaf_lifetime: String,
    pub workloads: Vec<Value>,
    pub services: Vec<Value>,
    pub policies: Vec<Value>,
    /// HTTP and gRPC routes (`model::route::Route`, flattened like policies).
    pub routes: Vec<Value>,
    /// Traffic policies (`model::traffic::TrafficPolicy`: name, namespace, spec).
    pub traffic_policies: Vec<Value>,
    /// Each node's `hbone` timers (`{}`: the defaults).
    pub hbone: Value,
}

impl Mesh {
    /// A mesh with nodes `node1..=nodeN` and a fresh root CA.
    pub fn new(id: u8, nodes: u8) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (cert, key) =
            weft_core::identity::generate_root("weft test root", Duration::from_secs(86400))?;
        std::fs::write(dir.path().join("root-cert.pem"), cert)?;
        std::fs::write(dir.path().join("root-key.pem"), key)?;
        Ok(Mesh {
            id,
            dir,
            nodes: (1..=nodes).map(|n| format!("node{n}")).collect(),
            leaf_lifetime: "24h".into(),
            workloads: Vec::new(),
            services: Vec::new(),
            policies: Vec::new(),
            routes: Vec::new(),
            traffic_policies: Vec::new(),
            hbone: json!({}),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    pub fn to_value(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let a = NodeAddrs::new(self.id, i as u8 + 1);
                json!({"name": name, "drainPeriod": "2s", "hbone": self.hbone, "listen": {
                    "outbound": a.outbound.to_string(), "admin": a.admin.to_string(),
                    "metrics": a.metrics.to_string(), "readiness": a.readiness.to_string()}})
            })
            .collect();
        json!({
            "trustDomain": "cluster.local",
            "ca": {"certFile": "root-cert.pem", "keyFile": "root-key.pem", "leafLifetime": self.leaf_lifetime},
            "nodes": nodes,
            "workloads": self.workloads,
            "services": self.services,
            "policies": self.policies,
            "routes": self.routes,
            "trafficPolicies": self.traffic_policies,
        })
    }

    /// Writes the mesh file atomically (write + rename), as an editor or a ConfigMap would.
    pub fn write(&self) -> anyhow::Result<()> {
        self.write_text(&serde_yaml_ng::to_string(&self.to_value())?)
    }

    pub fn write_text(&self, text: &str) -> anyhow::Result<()> {
        let tmp = self.dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.path())?;
        Ok(())
    }

    /// The mesh's own CA, as the nodes load it.
    pub fn ca(&self) -> weft_core::identity::CertificateAuthority {
        weft_core::identity::CertificateAuthority::load(
            &self.dir.path().join("root-cert.pem"),
            &self.dir.path().join("root-key.pem"),
            None,
            None,
        )
        .expect("the test mesh's CA")
    }

    /// An HBONE client's TLS for `default/<sa>`, its certificate from `issuer` (default the
    /// mesh's CA), that accepts only a server proving `default/<expected>` under the mesh's
    /// root.
    pub fn client_tls(
        &self,
        issuer: Option<&weft_core::identity::CertificateAuthority>,
        sa: &str,
        expected: &str,
    ) -> std::sync::Arc<rustls::ClientConfig> {
        use weft_core::identity::{SpiffeId, TrustAnchors};
        let id = |sa: &str| SpiffeId::new("cluster.local", "default", sa).expect("a valid id");
        let mesh_ca = self.ca();
        let cert = issuer
            .unwrap_or(&mesh_ca)
            .issue(&id(sa), Duration::from_secs(3600))
            .expect("a test certificate");
        let roots = TrustAnchors::new(mesh_ca.trust_bundle()).expect("the mesh root");
        weft_core::identity::client_config(&cert, &roots, id(expected)).expect("a TLS config")
    }

    /// Writes the mesh file and starts the weftd of node1 and node2.
    pub fn start_both(&self) -> anyhow::Result<(Weftd, Weftd)> {
        self.write()?;
        Ok((self.start(1)?, self.start(2)?))
    }

    /// Starts weftd for node `n` (1-based) and waits until it is ready.
    pub fn start(&self, n: u8) -> anyhow::Result<Weftd> {
        self.start_with(n, &[], &[])
    }

    /// Like [`start`](Self::start), with extra arguments and environment variables.
    pub fn start_with(
        &self,
        n: u8,
        args: &[String],
        envs: &[(&str, &Path)],
    ) -> anyhow::Result<Weftd> {
        let name = &self.nodes[n as usize - 1];
        let log = self.dir.path().join(format!("{name}.log"));
        let child = Command::new(weftd_bin())
            .args(["run", "--mesh"])
            .arg(self.path())
            .args([
                "--node",
                name,
                "--log",
                "info,weft::access=info",
                "--reload-interval",
                "100ms",
            ])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting weftd")?;
        let mut w = Weftd {
            child,
            addrs: NodeAddrs::new(self.id, n),
            log,
        };
        w.wait_ready(Duration::from_secs(15))?;
        Ok(w)
    }
}

/// Where the test waypoint serves: a workload address of its own on "node3".
pub fn waypoint_addrs(id: u8) -> (SocketAddr, SocketAddr, SocketAddr) {
    let a = ip(id, 3, 250);
    (
        SocketAddr::new(a, 15008),
        SocketAddr::new(a, 15021),
        SocketAddr::new(a, 15000),
    )
}

/// A running weft-waypoint named `waypoint` in `default`; killed when dropped.
pub struct WaypointProcess {
    child: Child,
    log: PathBuf,
    pub hbone: SocketAddr,
    pub monitoring: SocketAddr,
    pub admin: SocketAddr,
}

impl WaypointProcess {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http(self.monitoring, "GET", "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn config_dump(&self) -> anyhow::Result<Value> {
        let (status, body) = http(self.admin, "GET", "/config_dump")?;
        anyhow::ensure!(status == 200, "config_dump: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }
}

impl Drop for WaypointProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mesh {
    /// Starts the waypoint (mesh from the mesh file) and waits until it is ready.
    pub fn start_waypoint(&self) -> anyhow::Result<WaypointProcess> {
        self.start_waypoint_with(&[], &[])
    }

    /// As [`Mesh::start_waypoint`], with more arguments and environment (Kubernetes mode).
    pub fn start_waypoint_with(
        &self,
        extra: &[String],
        env: &[(&str, &Path)],
    ) -> anyhow::Result<WaypointProcess> {
        let (hbone, monitoring, admin) = waypoint_addrs(self.id);
        let log = self.dir.path().join("waypoint.log");
        let child = Command::new(waypoint_bin())
            .arg("--mesh")
            .arg(self.path())
            .args(["--name", "waypoint", "--namespace", "default"])
            .args(["--listen", &hbone.to_string()])
            .args(["--monitoring", &monitoring.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--reload-interval", "100ms"])
            .args(["--log", "info,weft::access=info"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting weft-waypoint")?;
        let mut p = WaypointProcess {
            child,
            log,
            hbone,
            monitoring,
            admin,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("weft-waypoint exited ({status}):\n{}", p.logs());
            }
            if let Ok((200, _)) = http(monitoring, "GET", "/healthz/ready") {
                return Ok(p);
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("weft-waypoint not ready:\n{}", p.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running weftd; killed when dropped.
pub struct Weftd {
    pub child: Child,
    pub addrs: NodeAddrs,
    pub log: PathBuf,
}

impl Weftd {
    pub fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "weftd exited ({status}) before it was ready:\n{}",
                    self.logs()
                );
            }
            if let Ok((200, _)) = http(self.addrs.readiness, "GET", "/healthz/ready") {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("weftd not ready after {limit:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http(self.addrs.metrics, "GET", "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }

    pub fn config_dump(&self) -> anyhow::Result<Value> {
        let (status, body) = http(self.addrs.admin, "GET", "/config_dump")?;
        if status != 200 {
            bail!("config_dump answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > limit {
                bail!("weftd still running {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Weftd {
    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process: a peer that stops answering without
    /// closing anything, as a hung or partitioned node does.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Weftd {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 request, enough for the admin endpoints; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: weftd\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// What a workload at `src` does when it connects to `dst` through its node: connect from
/// its own address to the node's outbound listener and state the destination.
pub async fn connect_via(
    node: &NodeAddrs,
    src: IpAddr,
    dst: SocketAddr,
) -> anyhow::Result<TcpStream> {
    let sock = if src.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(src, 0))?;
    let mut tcp = sock.connect(node.outbound).await?;
    let local = tcp.local_addr()?;
    let proto = if dst.is_ipv4() { "TCP4" } else { "TCP6" };
    let header = format!(
        "PROXY {proto} {} {} {} {}\r\n",
        local.ip(),
        dst.ip(),
        local.port(),
        dst.port()
    );
    tcp.write_all(header.as_bytes()).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Sums the values of the series of `name` whose labels contain every `label="value"` given.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
