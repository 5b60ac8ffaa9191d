//! `cargo xtask bench l7`: what weft's waypoint costs against Envoy in the same place, and what
//! the L7 hop costs against L4 alone, in one run.
//!
//! The topology is `bench l4`'s (two node namespaces on a bridge, weftd with eBPF capture on
//! each, release builds). node1 has an enrolled client pod and an unenrolled one; node2 has an
//! enrolled server pod, an unenrolled one, weft's waypoint and Envoy 1.40 (both unenrolled, as
//! waypoints are: they terminate HBONE themselves). Every server is `loadgen http-serve`
//! (hyper, HTTP/1.1 and h2c on one port). The paths, each a Service of its own:
//!
//! - *direct*: unenrolled client to the unenrolled server, no proxy at all;
//! - *L4*: enrolled client -> weftd -> weftd -> enrolled server;
//! - *mesh*: enrolled client -> weftd -> weft waypoint -> weftd -> enrolled server (the full
//!   mesh path);
//! - *weft* and *envoy*: enrolled client -> weftd -> the waypoint -> unenrolled server. weftd
//!   is the same, the tunnel is the same (mutual TLS, HTTP/2 CONNECT), the route is the same
//!   (every request to the one backend, which is spoken to in the client's protocol): only
//!   the waypoint differs.
//!
//! Every figure is measured `RUNS` times with the paths alternating (the order rotates each
//! run), and reported as medians and ratios of medians from this run. Writes the L7 part of
//! `docs/benchmarks.md` and `target/bench/l7.json`.

mod envoy;
mod figures;
mod hops;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use weft_tests::netns::{Killed, Topology, read, wait_for, write_mesh};

pub const RUNS: usize = 5;
const PREFIX: &str = "weft-bench-l7";
const ID: u8 = 71;
const SERVER_PORT: u16 = 8080;
const NAMESPACES: [&str; 9] = [
    "node1",
    "node2",
    "lan",
    "client-mesh",
    "client-plain",
    "server-mesh",
    "server-plain",
    "waypoint",
    "envoy",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Direct,
    L4,
    Mesh,
    Weft,
    Envoy,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::Direct,
        Route::L4,
        Route::Mesh,
        Route::Weft,
        Route::Envoy,
    ];

    /// The Service VIP's last octet (`10.ID.100.x`); none for the direct path.
    fn vip(self) -> Option<u8> {
        match self {
            Route::Direct => None,
            Route::L4 => Some(1),
            Route::Mesh => Some(2),
            Route::Weft => Some(3),
            Route::Envoy => Some(4),
        }
    }

    /// (client pod, address) a client of this path connects to.
    pub fn ends(self, ips: &Ips) -> (&'static str, String) {
        match self.vip() {
            None => (
                "client-plain",
                format!("{}:{SERVER_PORT}", ips.server_plain),
            ),
            Some(v) => ("client-mesh", format!("10.{ID}.100.{v}:80")),
        }
    }

    /// The path's name on the command line (`--routes`) and in `l7.json`.
    pub fn key(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::L4 => "l4",
            Route::Mesh => "mesh",
            Route::Weft => "weft",
            Route::Envoy => "envoy",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::L4 => "L4 (weftd only)",
            Route::Mesh => "mesh (weftd, waypoint, weftd)",
            Route::Weft => "weft waypoint",
            Route::Envoy => "Envoy waypoint",
        }
    }
}

#[derive(Clone)]
pub struct Ips {
    pub client_mesh: String,
    pub client_plain: String,
    pub server_mesh: String,
    pub server_plain: String,
    pub waypoint: String,
    pub envoy: String,
}

pub struct L7 {
    pub t: Topology,
    pub dir: PathBuf,
    pub loadgen: PathBuf,
    pub ips: Ips,
    cgroup2: PathBuf,
    pub waypoint: Killed,
    pub envoy: Killed,
    pub envoy_version: String,
    /// Runs per figure (`RUNS` unless `--runs` says otherwise while iterating).
    pub runs: usize,
    /// The paths measured (all unless `--routes` picks some while iterating).
    pub routes: Vec<Route>,
    weftd: Vec<Killed>,
    servers: Vec<Killed>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let value = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1).cloned();
    let only: Vec<String> = value("--only")
        .map(|v| v.split(',').map(String::from).collect())
        .unwrap_or_default();
    let want = |f: &str| only.is_empty() || only.iter().any(|o| o == f);
    // While iterating on one figure: fewer runs, fewer paths. Such a run writes no table.
    let runs = match value("--runs") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("--runs {v:?}: a number of runs, 1 or more"))?,
        None => RUNS,
    };
    let routes = match value("--routes") {
        Some(v) => v
            .split(',')
            .map(|name| {
                Route::ALL
                    .into_iter()
                    .find(|r| r.key() == name)
                    .with_context(|| {
                        format!("--routes: no path {name:?} (direct, l4, mesh, weft, envoy)")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => Route::ALL.to_vec(),
    };
    let (profiling, following) = (
        only.iter().any(|o| o == "profile"),
        only.iter().any(|o| o == "hops"),
    );
    let complete = only.is_empty() && runs == RUNS && routes.len() == Route::ALL.len();
    if !crate::tools::is_root() {
        bail!("the L7 benchmarks build network namespaces and load eBPF programs: run as root");
    }
    crate::tools::ensure(&[
        ("h2load", "nghttp2-client"),
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("python3", "python3"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ])?;
    let envoy_bin = envoy::install()?;
    let _claim = weft_tests::netns::claim_names("cargo xtask bench", PREFIX, &NAMESPACES)?;
    let started = std::time::Instant::now();
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
    let result = (|| {
        let mut b = L7::new(&dir, &target, &envoy_bin)?;
        b.runs = runs;
        b.routes = routes;
        let mut r = figures::Results {
            envoy: b.envoy_version.clone(),
            ..Default::default()
        };
        type Figure = fn(&mut L7, &mut figures::Results) -> anyhow::Result<()>;
        let all: [(&str, Figure); 4] = [
            ("memory", figures::idle_memory),
            ("throughput", figures::throughput),
            ("latency", figures::latency),
            ("scale", figures::scale),
        ];
        // Not figures: `--only profile` records where each waypoint spends its CPU, `--only
        // hops` follows requests through the scheduler's trace.
        if profiling {
            figures::profile(&b)?;
            return Ok((r, Vec::new()));
        }
        if following {
            hops::hops(&b)?;
            return Ok((r, Vec::new()));
        }
        let mut failed = Vec::new();
        for (name, figure) in all {
            if want(name)
                && let Err(e) = figure(&mut b, &mut r)
            {
                eprintln!("figure {name} failed: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
        Ok::<_, anyhow::Error>((r, failed))
    })();
    if std::env::var_os("WEFT_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {}", dir.display());
    }
    let (r, failed) = result?;
    // The diagnostics measure no figure: the last run's l7.json stays.
    if profiling || following {
        return Ok(());
    }
    report::write(&r, started.elapsed(), complete && failed.is_empty())?;
    if !failed.is_empty() {
        bail!("some figures failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

impl L7 {
    fn new(dir: &Path, target: &Path, envoy_bin: &Path) -> anyhow::Result<Self> {
        let mut t = Topology::named(PREFIX, ID)?;
        t.node("node1")?;
        t.node("node2")?;
        t.link_nodes("node1", 1, "node2", 2)?;
        let ips = Ips {
            client_mesh: t.pod("node1", "client-mesh", 1, 2)?,
            client_plain: t.pod("node1", "client-plain", 1, 3)?,
            server_mesh: t.pod("node2", "server-mesh", 2, 2)?,
            server_plain: t.pod("node2", "server-plain", 2, 3)?,
            waypoint: t.pod("node2", "waypoint", 2, 4)?,
            envoy: t.pod("node2", "envoy", 2, 5)?,
        };
        let cgroup2 = t.extra_cgroup("node2")?;
        let loadgen = target.join("xtask");
        let mut servers = Vec::new();
        for (pod, ip) in [
            ("server-mesh", &ips.server_mesh),
            ("server-plain", &ips.server_plain),
        ] {
            let out = dir.join(format!("{pod}.out"));
            servers.push(Killed(
                t.pod_command(
                    pod,
                    &format!(
                        "{} loadgen http-serve {ip}:{SERVER_PORT}",
                        loadgen.display()
                    ),
                )
                .stdout(std::fs::File::create(&out)?)
                .spawn()?,
            ));
            if !wait_for(|| read(&out).contains("listening")) {
                bail!("the HTTP server in {pod} did not start");
            }
        }
        let mut b = L7 {
            t,
            dir: dir.to_path_buf(),
            loadgen,
            ips,
            cgroup2,
            // Placeholders until the real processes start below.
            waypoint: Killed(std::process::Command::new("true").spawn()?),
            envoy: Killed(std::process::Command::new("true").spawn()?),
            envoy_version: envoy::version(envoy_bin)?,
            runs: RUNS,
            routes: Route::ALL.to_vec(),
            weftd: Vec::new(),
            servers,
        };
        b.write_mesh(0)?;
        b.weftd = vec![
            b.t.start_weftd(dir, "node1", "--reload-interval 50ms")?,
            b.t.start_weftd(dir, "node2", "--reload-interval 50ms")?,
        ];
        // No access log on either waypoint, as Istio installs Envoy; metrics stay on in both.
        // Another build of the waypoint, to compare build settings; not the project's figure.
        let waypoint_bin = match std::env::var_os("WEFT_BENCH_WAYPOINT") {
            Some(p) => {
                eprintln!("weft-waypoint: {}", p.to_string_lossy());
                PathBuf::from(p)
            }
            None => target.join("weft-waypoint"),
        };
        b.waypoint = b.t.start_waypoint(
            dir,
            "waypoint",
            &waypoint_bin,
            "--log warn,weft_waypoint::run=info --reload-interval 50ms",
        )?;
        envoy::certificate(dir, "spiffe://cluster.local/ns/default/sa/envoy")?;
        let config = dir.join("envoy.yaml");
        std::fs::write(
            &config,
            envoy::config(dir, &b.ips.server_plain, SERVER_PORT),
        )?;
        let log = dir.join("envoy.log");
        b.envoy = Killed(
            b.t.pod_command(
                "envoy",
                &format!(
                    "{} -c {} --concurrency 2 --log-level warn --disable-hot-restart",
                    envoy_bin.display(),
                    config.display()
                ),
            )
            .stdout(std::fs::File::create(dir.join("envoy.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
        );
        let ready = wait_for(|| {
            b.t.exec("envoy", "curl -sf http://127.0.0.1:15000/ready")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !ready {
            bail!("Envoy did not become ready:\n{}", read(&log));
        }
        // Every path answers before anything is measured.
        for route in Route::ALL {
            let (pod, addr) = route.ends(&b.ips);
            let ok = wait_for(|| {
                b.t.pod_exec(pod, &format!("curl -sf -m 2 -o /dev/null http://{addr}/"))
                    .is_ok_and(|o| o.status.success())
            });
            if !ok {
                bail!(
                    "{} ({addr} from {pod}) does not answer\nwaypoint:\n{}\nenvoy:\n{}\nnode1:\n{}",
                    route.name(),
                    read(dir.join("waypoint.log")),
                    read(&log),
                    read(dir.join("node1.log"))
                );
            }
        }
        Ok(b)
    }

    /// The mesh file. `scale` > 0 attaches that many more routes (exact paths that the
    /// benchmark's `GET /` never takes, ahead of its catch-all in precedence) and as many DENY
    /// authorization policies (paths it never asks for, so every one is evaluated) to the
    /// *weft* path's Service.
    pub fn write_mesh(&self, scale: usize) -> anyhow::Result<()> {
        let t = &self.t;
        let nodes = t.ebpf_node("node1", &t.cgroup, "uplink")
            + &t.ebpf_node("node2", &self.cgroup2, "uplink");
        let i = &self.ips;
        let none = ", mode: none";
        let workloads = t.pod_entry("client-mesh", &i.client_mesh, "node1", "")
            + &t.pod_entry("client-plain", &i.client_plain, "node1", none)
            + &t.pod_entry("server-mesh", &i.server_mesh, "node2", "")
            + &t.pod_entry("server-plain", &i.server_plain, "node2", none)
            + &t.pod_entry("waypoint", &i.waypoint, "node2", none)
            + &t.pod_entry("envoy", &i.envoy, "node2", none);
        let service = |name: &str, vip: u8, port: u16, app: &str, waypoint: &str| {
            format!(
                "  - {{name: {name}, vips: [10.{ID}.100.{vip}], ports: [{{port: {port}, targetPort: {}}}], selector: {{app: {app}}}{waypoint}}}\n",
                if port == 80 { SERVER_PORT } else { port }
            )
        };
        let mut rest = String::from("services:\n");
        rest += &service("l4", 1, 80, "server-mesh", "");
        rest += &service("mesh", 2, 80, "server-mesh", ", waypoint: waypoint");
        rest += &service("weft", 3, 80, "server-plain", ", waypoint: waypoint");
        rest += &service("envoy-bound", 4, 80, "server-plain", ", waypoint: envoy");
        rest += &service("waypoint", 5, 15008, "waypoint", "");
        rest += &service("envoy", 6, 15008, "envoy", "");
        // Envoy's route: every request to the backend. weft's is the same route.
        rest += "routes:
  - name: weft
    namespace: default
    parentRefs: [{kind: Service, name: weft, port: 80}]
    rules:
      - backendRefs: [{name: weft, port: 80}]
";
        for n in 0..scale {
            rest += &format!(
                "  - {{name: r{n}, namespace: default, parentRefs: [{{kind: Service, name: weft, port: 80}}], rules: [{{matches: [{{path: {{type: Exact, value: /r{n}}}}}], backendRefs: [{{name: weft, port: 80}}]}}]}}\n"
            );
        }
        if scale > 0 {
            rest += "policies:\n";
            for n in 0..scale {
                rest += &format!(
                    "  - {{name: p{n}, namespace: default, targetRefs: [{{kind: Service, name: weft}}], action: DENY, rules: [{{to: [{{operation: {{paths: [/deny{n}]}}}}]}}]}}\n"
                );
            }
        }
        write_mesh(&self.dir, &nodes, &workloads, &rest)
    }

    /// Runs `cmd` in `pod` to completion and returns its stdout, failing with its stderr.
    pub fn run_in(&self, pod: &str, cmd: &str) -> anyhow::Result<String> {
        let out = self.t.pod_exec(pod, cmd)?;
        if !out.status.success() {
            bail!(
                "`{cmd}` in {pod} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The process a path's L7 hop runs in, if it has one.
    pub fn proxy_pid(&self, route: Route) -> Option<u32> {
        match route {
            Route::Mesh | Route::Weft => Some(self.waypoint.0.id()),
            Route::Envoy => Some(self.envoy.0.id()),
            Route::Direct | Route::L4 => None,
        }
    }

    pub fn waypoint_log(&self) -> String {
        read(self.dir.join("waypoint.log"))
    }

    pub fn loadgen(&self, pod: &str, args: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.run_in(pod, &format!("{} loadgen {args}", self.loadgen.display()))?;
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("no JSON in the load generator's output: {out}"))?;
        Ok(serde_json::from_str(line)?)
    }
}

impl L7 {
    /// The order of the paths in run `run`: rotated, so none is always first or last.
    pub fn order(&self, run: usize) -> Vec<Route> {
        let mut v = self.routes.clone();
        let n = v.len().max(1);
        v.rotate_left(run % n);
        v
    }
}

pub const SETTLE: Duration = Duration::from_millis(300);
