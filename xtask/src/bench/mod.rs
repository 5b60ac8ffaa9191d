//! `cargo xtask bench l4`: what the mesh costs, against the direct path, in one run.
//!
//! The topology is the end-to-end tests' (`weft_tests::netns`): two node namespaces on a
//! bridge, each with weftd (release build) and eBPF capture. On node1 an enrolled client pod
//! and an unenrolled one; on node2 an enrolled server pod and an unenrolled one. "direct" is
//! unenrolled to unenrolled (the kernel path alone), "weft" is enrolled to enrolled (both weftd,
//! mutual-TLS HBONE). "relays" is the floor of any proxy per node: unenrolled to unenrolled
//! through a plain TCP relay in each node namespace (`loadgen relay`). Every figure is
//! measured `RUNS` times, alternating the paths, and reported as medians and ratios of medians
//! from the same run: absolute figures drift on these machines, ratios hold.
//!
//! Writes `docs/benchmarks.md` and `target/bench/l4.json` (every run's raw numbers).

mod figures;
mod l7;
pub mod loadgen;
mod report;
mod stalls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use weft_tests::netns::{Killed, Topology, read, write_mesh};

pub const RUNS: usize = 5;
const PREFIX: &str = "weft-bench";
const ID: u8 = 70;
const ECHO_PORT: u16 = 9000;
/// The bench topology's namespaces, `<PREFIX>-<name>`.
const NAMESPACES: [&str; 7] = [
    "node1",
    "node2",
    "lan",
    "client-mesh",
    "client-plain",
    "server-mesh",
    "server-plain",
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("l4") => {
            let value = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1).cloned();
            let only: Vec<String> = value("--only")
                .map(|v| v.split(',').map(String::from).collect())
                .unwrap_or_default();
            l4(&only, value("--features").as_deref())
        }
        Some("l7") => l7::run(&args[1..]),
        _ => bail!(
            "usage: cargo xtask bench l4 [--only throughput,latency,connrate,memory,reload,criterion] \
             [--features <weftd features, e.g. aws-lc-rs>]\n       cargo xtask bench l7 [--only memory,throughput,latency,scale,profile,hops] \
             [--runs N] [--routes direct,l4,mesh,weft,envoy] (fewer runs or paths: no table)"
        ),
    }
}

/// The bench's namespaces, processes and paths.
pub struct Bench {
    pub t: Topology,
    pub dir: PathBuf,
    pub loadgen: PathBuf,
    pub ips: Ips,
    pub cgroup2: PathBuf,
    /// More `weftd run` arguments (WEFT_BENCH_WEFTD_ARGS).
    weftd_args: String,
    weftd: Vec<Killed>,
    _servers: Vec<Killed>,
}

#[derive(Clone)]
pub struct Ips {
    pub client_mesh: String,
    pub client_plain: String,
    pub server_mesh: String,
    pub server_plain: String,
    /// The nodes' own addresses, where the relays listen.
    pub node1: String,
    pub node2: String,
}

/// The paths every figure compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Unenrolled pod to unenrolled pod: the kernel alone.
    Direct,
    /// Unenrolled pod to a plain TCP relay on node1, to one on node2, to an unenrolled pod:
    /// what any proxy per node costs on this machine before it does anything of its own.
    Relays,
    /// Enrolled pod to enrolled pod, through both weftd.
    Weft,
}

/// A relay for server port P listens on P + RELAY_PORT_OFFSET on both nodes.
const RELAY_PORT_OFFSET: u16 = 20_000;
const IPERF_PORT: u16 = 5201;

impl Route {
    pub const ALL: [Route; 3] = [Route::Direct, Route::Relays, Route::Weft];

    /// (client pod, host, port) a client of this route connects to, for a server on `port`.
    pub fn ends(self, ips: &Ips, port: u16) -> (&'static str, String, u16) {
        match self {
            Route::Direct => ("client-plain", ips.server_plain.clone(), port),
            Route::Relays => ("client-plain", ips.node1.clone(), port + RELAY_PORT_OFFSET),
            Route::Weft => ("client-mesh", ips.server_mesh.clone(), port),
        }
    }
}

/// `only`: figures to run (empty: all). A partial run prints its table but does not rewrite
/// docs/benchmarks.md. `features`: cargo features of weftd for this run (to compare builds,
/// e.g. crypto providers); such a run is not the project's figure either.
fn l4(only: &[String], features: Option<&str>) -> anyhow::Result<()> {
    let want = |f: &str| only.is_empty() || only.iter().any(|o| o == f);
    if !crate::tools::is_root() {
        bail!("the L4 benchmarks build network namespaces and load eBPF programs: run as root");
    }
    crate::tools::ensure(&[
        ("iperf3", "iperf3"),
        ("curl", "curl"),
        ("python3", "python3"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ])?;
    // One bench at a time; what a killed one left is removed.
    let _claim = weft_tests::netns::claim_names("cargo xtask bench", PREFIX, &NAMESPACES)?;
    let started = std::time::Instant::now();
    // More `weftd run` arguments, to compare settings; such a run is not the project's figure.
    let weftd_args = std::env::var("WEFT_BENCH_WEFTD_ARGS").unwrap_or_default();
    if !weftd_args.is_empty() {
        eprintln!("weftd run with: {weftd_args}");
    }
    let mut build = vec!["build", "--release", "-p", "weftd", "-p", "xtask"];
    let qualified = features.map(|f| format!("weftd/{f}"));
    if let Some(f) = &qualified {
        build.extend(["--features", f]);
    }
    crate::cargo(&build)?;
    let target = crate::workspace_root().join("target/release");
    // SAFETY: single-threaded here; the harness reads WEFTD to find the binary to run.
    unsafe { std::env::set_var("WEFTD", target.join("weftd")) };
    let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let mut bench = Bench::new(&dir, target.join("xtask"), &weftd_args)?;
        let mut results = figures::Results::default();
        type Figure = fn(&mut Bench, &mut figures::Results) -> anyhow::Result<()>;
        let all: [(&str, Figure); 5] = [
            ("throughput", figures::throughput),
            ("latency", figures::latency),
            ("connrate", figures::connection_rate),
            ("memory", figures::memory),
            ("reload", figures::control_path),
        ];
        // A figure that fails is reported, and the others still run.
        let mut failed = Vec::new();
        for (name, figure) in all {
            if want(name)
                && let Err(e) = figure(&mut bench, &mut results)
            {
                eprintln!("figure {name} failed: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
        Ok::<_, anyhow::Error>((results, failed))
    })();
    // WEFT_BENCH_KEEP=1 keeps the logs and mesh files (weftd's own timings are in its log).
    if std::env::var_os("WEFT_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {}", dir.display());
    }
    let (results, failed) = result?;
    let criterion = if want("criterion") {
        figures::criterion()?
    } else {
        Vec::new()
    };
    report::write(
        &results,
        &criterion,
        started.elapsed(),
        features,
        only.is_empty() && failed.is_empty() && features.is_none() && weftd_args.is_empty(),
    )?;
    if !failed.is_empty() {
        bail!("some figures failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

impl Bench {
    fn new(dir: &Path, loadgen: PathBuf, weftd_args: &str) -> anyhow::Result<Self> {
        let mut t = Topology::named(PREFIX, ID)?;
        t.node("node1")?;
        t.node("node2")?;
        let (node1, node2) = t.link_nodes("node1", 1, "node2", 2)?;
        let ips = Ips {
            client_mesh: t.pod("node1", "client-mesh", 1, 2)?,
            client_plain: t.pod("node1", "client-plain", 1, 3)?,
            server_mesh: t.pod("node2", "server-mesh", 2, 2)?,
            server_plain: t.pod("node2", "server-plain", 2, 3)?,
            node1,
            node2,
        };
        let cgroup2 = t.extra_cgroup("node2")?;
        // Connection-rate runs open tens of thousands of connections: a wide port range and
        // TIME_WAIT reuse, in the bench's own namespaces only.
        for ns in ["node1", "node2", "client-mesh", "client-plain"] {
            t.exec(
                ns,
                "sysctl -qw net.ipv4.ip_local_port_range='1024 65000' net.ipv4.tcp_tw_reuse=1",
            )
            .status()?;
        }
        let mut bench = Bench {
            t,
            dir: dir.to_path_buf(),
            loadgen,
            ips,
            cgroup2,
            weftd_args: weftd_args.to_string(),
            weftd: Vec::new(),
            _servers: Vec::new(),
        };
        bench.write_mesh(0)?;
        let mut servers = Vec::new();
        for (pod, ip) in [
            ("server-mesh", bench.ips.server_mesh.clone()),
            ("server-plain", bench.ips.server_plain.clone()),
        ] {
            servers.push(bench.spawn(pod, &format!("iperf3 -s -B {ip}"), "iperf3")?);
            servers.push(bench.spawn(
                pod,
                &format!("{} loadgen echo {ip}:{ECHO_PORT}", bench.loadgen.display()),
                "echo",
            )?);
        }
        let loadgen = bench.loadgen.display().to_string();
        for port in [IPERF_PORT, ECHO_PORT] {
            let relay = port + RELAY_PORT_OFFSET;
            let (n1, n2, server) = (&bench.ips.node1, &bench.ips.node2, &bench.ips.server_plain);
            for (node, from, to) in [
                ("node2", n2, format!("{server}:{port}")),
                ("node1", n1, format!("{n2}:{relay}")),
            ] {
                let cmd = format!("exec {loadgen} loadgen relay {from}:{relay} {to}");
                servers.push(bench.start(
                    bench.t.exec(node, &cmd),
                    node,
                    &format!("relay{port}"),
                )?);
            }
        }
        bench._servers = servers;
        std::thread::sleep(Duration::from_millis(500));
        bench.start_weftd()?;
        Ok(bench)
    }

    /// The mesh file: the bench's four pods plus `synthetic` generated workloads (with a tenth
    /// as many services and as many policies) on nodes that do not exist.
    pub fn write_mesh(&self, synthetic: usize) -> anyhow::Result<()> {
        let t = &self.t;
        let nodes = t.ebpf_node("node1", &t.cgroup, "uplink")
            + &t.ebpf_node("node2", &self.cgroup2, "uplink");
        let i = &self.ips;
        let workloads = t.pod_entry("client-mesh", &i.client_mesh, "node1", "")
            + &t.pod_entry("client-plain", &i.client_plain, "node1", ", mode: none")
            + &t.pod_entry("server-mesh", &i.server_mesh, "node2", "")
            + &t.pod_entry("server-plain", &i.server_plain, "node2", ", mode: none");
        let mut rest = String::new();
        if synthetic > 0 {
            let generated =
                weft_core::config::synthetic::mesh_sections(weft_core::config::synthetic::Size {
                    workloads: synthetic,
                    services: synthetic / 10,
                    policies: synthetic / 10,
                });
            // The generated sections start with their own `workloads:` key: append the items.
            let (w, others) = generated
                .split_once("services:\n")
                .map(|(w, o)| (w.to_string(), format!("services:\n{o}")))
                .unwrap_or((generated.clone(), String::new()));
            let items = w.trim_start_matches("workloads:\n");
            rest = format!("{items}{others}");
        }
        write_mesh(&self.dir, &nodes, &(workloads + &rest), "")
    }

    /// A process in `pod` (its namespace and cgroup), output to `<dir>/<pod>-<name>.out`.
    pub fn spawn(&self, pod: &str, cmd: &str, name: &str) -> anyhow::Result<Killed> {
        self.start(self.t.pod_command(pod, cmd), pod, name)
            .with_context(|| format!("starting {cmd} in {pod}"))
    }

    /// Spawns `cmd`, output to `<dir>/<place>-<name>.out` and `.err`.
    fn start(
        &self,
        mut cmd: std::process::Command,
        place: &str,
        name: &str,
    ) -> anyhow::Result<Killed> {
        let file =
            |ext: &str| std::fs::File::create(self.dir.join(format!("{place}-{name}.{ext}")));
        let child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(file("out")?)
            .stderr(file("err")?)
            .spawn()?;
        Ok(Killed(child))
    }

    /// Runs `cmd` in `pod` to completion and returns its stdout, failing with its stderr.
    pub fn run_in(&self, pod: &str, cmd: &str) -> anyhow::Result<String> {
        let out = self.t.pod_exec(pod, cmd)?;
        if !out.status.success() {
            bail!(
                "`{cmd}` in {pod} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn start_weftd(&mut self) -> anyhow::Result<()> {
        self.weftd.clear();
        for node in ["node1", "node2"] {
            self.weftd.push(self.t.start_weftd(
                &self.dir,
                node,
                &format!("--reload-interval 50ms {}", self.weftd_args),
            )?);
        }
        Ok(())
    }

    pub fn stop_weftd(&mut self) {
        self.weftd.clear();
    }

    /// weftd's process ids (node1, node2).
    pub fn weftd_pids(&self) -> Vec<u32> {
        self.weftd.iter().map(|w| w.0.id()).collect()
    }

    pub fn log(&self, node: &str) -> String {
        read(self.dir.join(format!("{node}.log")))
    }
}
