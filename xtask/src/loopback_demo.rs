//! `cargo xtask demo --loopback`: a two-node mesh on loopback, without root and without
//! capture. A client workload on node1 calls the `echo`
//! service (two replicas on node2) through both weftd; the demo prints the replies, the access
//! log lines with the identities on each side, and the metric lines, then waits for Ctrl-C
//! (or exits at once with `--once`) and removes what it made.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const MESH: &str = r#"trustDomain: cluster.local
ca: {certFile: root-cert.pem, keyFile: root-key.pem, leafLifetime: 1h}
nodes:
  - {name: node1, listen: {outbound: "127.0.1.250:15001", admin: "127.0.1.250:15000", metrics: "127.0.1.250:15020", readiness: "127.0.1.250:15021"}}
  - {name: node2, listen: {outbound: "127.0.2.250:15001", admin: "127.0.2.250:15000", metrics: "127.0.2.250:15020", readiness: "127.0.2.250:15021"}}
workloads:
  - {name: sleep, serviceAccount: sleep, ips: [127.0.1.1], node: node1, labels: {app: sleep}}
  - {name: echo-1, serviceAccount: echo, ips: [127.0.2.1], node: node2, labels: {app: echo}}
  - {name: echo-2, serviceAccount: echo, ips: [127.0.2.2], node: node2, labels: {app: echo}}
services:
  - {name: echo, vips: [127.0.0.100], ports: [{port: 80, targetPort: 8080}], selector: {app: echo}}
policies:
  - name: echo-allow-sleep
    namespace: default
    selector: {matchLabels: {app: echo}}
    rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}]
"#;

struct Node {
    name: &'static str,
    child: Child,
    log: PathBuf,
    admin: &'static str,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    println!(
        "(loopback demo: no eBPF capture; the client states its destination with a PROXY header)"
    );
    let once = args.iter().any(|a| a == "--once");
    crate::cargo(&["build", "-p", "weftd"])?;
    let weftd = crate::workspace_root().join("target/debug/weftd");
    let dir = tempdir()?;
    let result = demo(&weftd, &dir, once);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn demo(weftd: &Path, dir: &Path, once: bool) -> anyhow::Result<()> {
    let status = Command::new(weftd)
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("weftd ca init failed");
    }
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, MESH)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    for (ip, name) in [("127.0.2.1", "echo-1"), ("127.0.2.2", "echo-2")] {
        http_server(format!("{ip}:8080").parse()?, name)?;
    }
    let nodes = [
        start(weftd, &mesh, dir, "node1", "127.0.1.250")?,
        start(weftd, &mesh, dir, "node2", "127.0.2.250")?,
    ];

    println!(
        "\n== two weftd nodes on loopback; workload sleep (127.0.1.1, node1) calls service echo (127.0.0.100:80)\n"
    );
    for i in 1..=4 {
        let reply = call("127.0.1.1", "127.0.1.250:15001", "127.0.0.100:80")?;
        println!("request {i}: {}", reply.lines().last().unwrap_or(""));
    }
    std::thread::sleep(Duration::from_millis(300));
    println!("\n== access log (who talked to whom, with which identities)");
    for n in &nodes {
        for line in std::fs::read_to_string(&n.log)?
            .lines()
            .filter(|l| l.contains("connection complete"))
        {
            println!(
                "{}: {}",
                n.name,
                line.split("weft::access: ").last().unwrap_or(line)
            );
        }
    }
    println!("\n== metrics (node2, reporter=destination)");
    let metrics = get("127.0.2.250:15020", "/metrics")?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("weft_tcp_connections_opened_total"))
    {
        println!("{line}");
    }
    println!("\n== try");
    println!(
        "  curl -s {}/config_dump | less          # node1 state, certificates, HBONE pool",
        nodes[0].admin
    );
    println!("  curl -s 127.0.2.250:15020/metrics | grep weft_");
    println!(
        "  tail -f {}                             # node2 log",
        nodes[1].log.display()
    );
    println!(
        "  edit {} (e.g. remove the policy's principal) and watch it reload",
        mesh.display()
    );
    if once {
        return Ok(());
    }
    println!("\nCtrl-C stops the demo and removes everything it created.");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping");
    Ok(())
}

fn start(
    weftd: &Path,
    mesh: &Path,
    dir: &Path,
    name: &'static str,
    ip: &str,
) -> anyhow::Result<Node> {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(weftd)
        .args(["run", "--mesh"])
        .arg(mesh)
        .args(["--node", name])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let admin: &'static str = Box::leak(format!("{ip}:15000").into_boxed_str());
    let node = Node {
        name,
        child,
        log,
        admin,
    };
    let start = Instant::now();
    while get(&format!("{ip}:15021"), "/healthz/ready")
        .map(|b| b != "ready\n")
        .unwrap_or(true)
    {
        if start.elapsed() > Duration::from_secs(15) {
            bail!(
                "{name} did not become ready:\n{}",
                std::fs::read_to_string(&node.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{name} ready (admin {admin})");
    Ok(node)
}

/// What the `sleep` workload does: connect from its address to its node and ask for `dst`.
fn call(src: &str, node: &str, dst: &str) -> anyhow::Result<String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&format!("{src}:0").parse::<SocketAddr>()?.into())?;
    sock.connect_timeout(&node.parse::<SocketAddr>()?.into(), Duration::from_secs(2))?;
    let mut s: TcpStream = sock.into();
    let local = s.local_addr()?;
    let dst: SocketAddr = dst.parse()?;
    write!(
        s,
        "PROXY TCP4 {} {} {} {}\r\n",
        local.ip(),
        dst.ip(),
        local.port(),
        dst.port()
    )?;
    write!(s, "GET / HTTP/1.0\r\nHost: echo\r\n\r\n")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(1))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// A tiny HTTP server standing in for the `echo` application.
fn http_server(addr: SocketAddr, name: &'static str) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let peer = s.peer_addr().ok();
            let mut r = BufReader::new(match s.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let body = format!(
                "hello from {name} ({addr}), you are {}\n",
                peer.map(|p| p.to_string()).unwrap_or_default()
            );
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}
