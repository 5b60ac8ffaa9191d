//! `cargo xtask bench waypoint`: what the waypoint hop adds to an HTTP request, against the
//! same request through the two nodes without it, in one run.
//!
//! One client pod on node1 and one server pod on node2 (both enrolled, eBPF capture, release
//! builds), a waypoint pod on node2. The server (`loadgen http-serve`) sits behind two
//! Services: `direct` (client -> weftd -> weftd -> server) and `bound` to the waypoint (client
//! -> weftd -> waypoint -> weftd -> server, routed as HTTP). `loadgen http-latency` sends
//! `GET /` at a fixed rate on kept connections and measures from each request's intended send
//! time. The two paths alternate, `RUNS` times; the table gives medians of p50/p99 and the
//! added latency. Writes `target/bench/waypoint.json` and `docs/benchmarks-waypoint.md`.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use weft_tests::netns::{Killed, Topology, read, wait_for, write_mesh};

const PREFIX: &str = "weft-bench-wp";
const ID: u8 = 71;
const NAMESPACES: [&str; 6] = ["node1", "node2", "lan", "client", "server", "waypoint"];
const RATE: u32 = 1000;
const SECONDS: u32 = 10;
const CONNECTIONS: u32 = 10;
const RUNS: usize = 3;

pub fn run() -> anyhow::Result<()> {
    if !crate::tools::is_root() {
        bail!(
            "the waypoint benchmark builds network namespaces and loads eBPF programs: run as root"
        );
    }
    crate::tools::ensure(&[
        ("curl", "curl"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ])?;
    let _claim = weft_tests::netns::claim_names("cargo xtask bench waypoint", PREFIX, &NAMESPACES)?;
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "weftd",
        "-p",
        "weft-waypoint",
        "-p",
        "xtask",
    ])?;
    let target = crate::workspace_root().join("target/release");
    // SAFETY: single-threaded here; the harness reads WEFTD to find the binary to run.
    unsafe { std::env::set_var("WEFTD", target.join("weftd")) };
    let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, &target);
    if std::env::var_os("WEFT_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {}", dir.display());
    }
    let runs = result?;
    report(&runs)
}

fn measure(dir: &Path, target: &Path) -> anyhow::Result<Vec<(String, Value)>> {
    let mut t = Topology::named(PREFIX, ID)?;
    t.node("node1")?;
    t.node("node2")?;
    t.link_nodes("node1", 1, "node2", 2)?;
    let client = t.pod("node1", "client", 1, 2)?;
    let server = t.pod("node2", "server", 2, 2)?;
    let wp = t.pod("node2", "waypoint", 2, 3)?;
    let cgroup2 = t.extra_cgroup("node2")?;
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    let workloads = t.pod_entry("client", &client, "node1", "")
        + &t.pod_entry("server", &server, "node2", "")
        + &t.pod_entry("waypoint", &wp, "node2", ", mode: none");
    let rest = format!(
        "services:
  - {{name: direct, vips: [10.{ID}.100.1], ports: [{{port: 80, targetPort: 8080, appProtocol: http}}], selector: {{app: server}}}}
  - {{name: bound, vips: [10.{ID}.100.2], ports: [{{port: 80, targetPort: 8080, appProtocol: http}}], selector: {{app: server}}, waypoint: waypoint}}
  - {{name: waypoint, vips: [10.{ID}.100.3], ports: [{{port: 15008}}], selector: {{app: waypoint}}}}
"
    );
    write_mesh(dir, &nodes, &workloads, &rest)?;
    let loadgen = target.join("xtask");
    let server_out = dir.join("server.out");
    let _server = Killed(
        t.pod_command(
            "server",
            &format!("{} loadgen http-serve {server}:8080", loadgen.display()),
        )
        .stdout(std::fs::File::create(&server_out)?)
        .spawn()?,
    );
    if !wait_for(|| read(&server_out).contains("listening")) {
        bail!("the HTTP server did not start");
    }
    let _w1 = t.start_weftd(dir, "node1", "")?;
    let _w2 = t.start_weftd(dir, "node2", "")?;
    let _waypoint =
        t.start_waypoint(dir, "waypoint", &target.join("weft-waypoint"), "--log warn")?;
    let wp_log = dir.join("waypoint.log");
    let mut runs = Vec::new();
    for run in 0..RUNS {
        for (path, vip) in [("direct", 1), ("waypoint", 2)] {
            let cmd = format!(
                "{} loadgen http-latency 10.{ID}.100.{vip}:80 {RATE} {SECONDS} {CONNECTIONS}",
                loadgen.display()
            );
            let out = t.pod_exec("client", &cmd)?;
            if !out.status.success() {
                bail!(
                    "{path} run {run}: {}\nwaypoint:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    read(&wp_log)
                );
            }
            let v: Value = serde_json::from_slice(&out.stdout).context("loadgen's JSON")?;
            eprintln!("{path} run {run}: {v}");
            runs.push((path.to_string(), v));
        }
    }
    Ok(runs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(runs: &[(String, Value)]) -> anyhow::Result<()> {
    let pick = |path: &str, key: &str| {
        median(
            runs.iter()
                .filter(|(p, _)| p == path)
                .filter_map(|(_, v)| v[key].as_f64())
                .collect(),
        )
    };
    let keys: Vec<&str> = ["p50_us", "p99_us"]
        .into_iter()
        .filter(|k| runs.iter().any(|(_, v)| v[*k].is_number()))
        .collect();
    if keys.is_empty() {
        bail!("loadgen's output has no p50_us/p99_us: {:?}", runs.first());
    }
    let mut table = String::from(
        "| | direct (weftd -> weftd) | through the waypoint | added |\n|---|---|---|---|\n",
    );
    for k in &keys {
        let (d, w) = (pick("direct", k), pick("waypoint", k));
        table.push_str(&format!(
            "| {} | {d:.0} us | {w:.0} us | {:.0} us ({:.2}x) |\n",
            k.trim_end_matches("_us"),
            w - d,
            w / d
        ));
    }
    let text = format!(
        "# Waypoint hop\n\nMade by `cargo xtask bench waypoint` (as root): HTTP/1.1 `GET /` at {RATE} req/s over {CONNECTIONS} kept connections for {SECONDS} s, \
         medians of {RUNS} alternating runs, latency from each request's intended send time. Same machine, same run.\n\n{table}"
    );
    println!("{text}");
    let root = crate::workspace_root();
    std::fs::create_dir_all(root.join("target/bench"))?;
    std::fs::write(
        root.join("target/bench/waypoint.json"),
        serde_json::to_string_pretty(&json!(runs))?,
    )?;
    std::fs::write(root.join("docs/benchmarks-waypoint.md"), text)?;
    Ok(())
}
