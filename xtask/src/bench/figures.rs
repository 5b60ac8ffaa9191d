//! Each figure of the L4 benchmarks: how it is measured, run by run. Medians and the table are
//! `report`'s.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use super::{Bench, ECHO_PORT, IPERF_PORT, RUNS, Route};

/// Seconds per throughput, latency and connection-rate run.
const SECONDS: u64 = 5;

#[derive(Debug, Default, Serialize)]
pub struct PerPath<T> {
    pub direct: Vec<T>,
    pub relays: Vec<T>,
    pub weft: Vec<T>,
}

impl<T> PerPath<T> {
    fn push(&mut self, path: Route, v: T) {
        match path {
            Route::Direct => self.direct.push(v),
            Route::Relays => self.relays.push(v),
            Route::Weft => self.weft.push(v),
        }
    }
}

/// One latency or connection-rate run, as the load generator reports it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub rate: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    #[serde(default)]
    pub failed: u64,
    /// Latency runs: the requests no CPU stall touched (`bench::stalls`), and the stalls.
    #[serde(default)]
    pub outside_stalls: Option<Outside>,
    #[serde(default)]
    pub stalls: u64,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Outside {
    pub p50_us: f64,
    pub p99_us: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// Gbit/s received, one stream.
    pub throughput_1: PerPath<f64>,
    /// Gbit/s received, eight streams.
    pub throughput_8: PerPath<f64>,
    /// CPU seconds of both weftd per GB carried, eight streams.
    pub weftd_cpu_s_per_gb: Vec<f64>,
    /// (target rate, runs).
    pub latency: Vec<(u32, PerPath<Percentiles>)>,
    pub connection_rate: PerPath<Percentiles>,
    /// (workloads in the mesh file, node1 weftd RSS in MiB per run).
    pub idle_rss_mib: Vec<(usize, Vec<f64>)>,
    /// (connections, KiB per connection per run, the larger of the two weftd).
    pub per_connection_kib: Vec<(usize, Vec<f64>)>,
    /// Mesh-file reload (load + apply) of 10 000 workloads, 1 000 services, 1 000 policies
    /// after an edit (one workload added), ms.
    pub reload_ms: Vec<f64>,
    /// The same mesh loaded over a small one (every item new), ms; one run.
    pub first_load_ms: f64,
}

/// Runs `xtask loadgen <args>` in `client` and reads the percentiles of its last JSON line.
fn loadgen(b: &Bench, client: &str, args: &str) -> anyhow::Result<Percentiles> {
    let out = b.run_in(client, &format!("{} loadgen {args}", b.loadgen.display()))?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON in the load generator's output: {out}"))?;
    Ok(serde_json::from_str(line)?)
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn throughput(b: &mut Bench, r: &mut Results) -> anyhow::Result<()> {
    eprintln!("== throughput (iperf3, {RUNS} runs of {SECONDS} s per path and stream count)");
    for run in 0..RUNS {
        for streams in [1, 8] {
            for path in Route::ALL {
                let (client, server, port) = path.ends(&b.ips, IPERF_PORT);
                let pids = b.weftd_pids();
                let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
                let out = b.run_in(
                    client,
                    &format!("iperf3 -c {server} -p {port} -t {SECONDS} -P {streams} -J"),
                )?;
                let cpu = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu0;
                // iperf3 -J prints one pretty-printed JSON document.
                let v: Value = serde_json::from_str(&out)
                    .with_context(|| format!("iperf3 output is not JSON: {out}"))?;
                let received = &v["end"]["sum_received"];
                let gbits = received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
                let bytes = received["bytes"].as_f64().unwrap_or(0.0);
                if gbits <= 0.0 {
                    bail!("iperf3 ({path:?}, -P {streams}) moved nothing: {out}");
                }
                eprintln!("run {run} {path:?} -P {streams}: {gbits:.2} Gbit/s");
                if streams == 1 {
                    r.throughput_1.push(path, gbits);
                } else {
                    r.throughput_8.push(path, gbits);
                    if path == Route::Weft {
                        r.weftd_cpu_s_per_gb.push(cpu / (bytes / 1e9));
                    }
                }
            }
        }
    }
    Ok(())
}

pub fn latency(b: &mut Bench, r: &mut Results) -> anyhow::Result<()> {
    eprintln!("== latency (1 KiB request/reply at fixed rates, {RUNS} runs of {SECONDS} s)");
    for (rate, connections) in [(1_000u32, 4), (10_000, 16)] {
        let mut runs = PerPath::default();
        for run in 0..RUNS {
            for path in Route::ALL {
                let (client, server, port) = path.ends(&b.ips, ECHO_PORT);
                let p = loadgen(
                    b,
                    client,
                    &format!("latency {server}:{port} {rate} {SECONDS} {connections} 1024"),
                )?;
                eprintln!(
                    "run {run} {path:?} {rate}/s: p50 {:.0} us, p99 {:.0} us, achieved {:.0}/s",
                    p.p50_us, p.p99_us, p.rate
                );
                runs.push(path, p);
            }
        }
        r.latency.push((rate, runs));
    }
    Ok(())
}

pub fn connection_rate(b: &mut Bench, r: &mut Results) -> anyhow::Result<()> {
    eprintln!("== connection setup (connect + 64 B exchange + close, 4 workers, {RUNS} runs)");
    for run in 0..RUNS {
        for path in Route::ALL {
            let (client, server, port) = path.ends(&b.ips, ECHO_PORT);
            let p = loadgen(b, client, &format!("connrate {server}:{port} {SECONDS} 4"))?;
            eprintln!(
                "run {run} {path:?}: {:.0} connections/s, p50 {:.0} us, p99 {:.0} us, {} failed",
                p.rate, p.p50_us, p.p99_us, p.failed
            );
            if p.rate <= 0.0 {
                bail!(
                    "no connection through {path:?} succeeded ({} failed)",
                    p.failed
                );
            }
            r.connection_rate.push(path, p);
        }
    }
    Ok(())
}

pub fn memory(b: &mut Bench, r: &mut Results) -> anyhow::Result<()> {
    eprintln!("== memory: weftd RSS idle by mesh size, and per proxied connection");
    for workloads in [10, 1_000, 10_000] {
        let mut runs = Vec::new();
        b.write_mesh(workloads)?;
        for _ in 0..RUNS {
            b.stop_weftd();
            b.start_weftd()?;
            std::thread::sleep(Duration::from_secs(2));
            runs.push(rss_kib(b.weftd_pids()[0]) / 1024.0);
        }
        eprintln!("{workloads} workloads: {runs:.1?} MiB");
        r.idle_rss_mib.push((workloads, runs));
    }
    b.write_mesh(0)?;
    for connections in [1_000usize, 10_000] {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            b.stop_weftd();
            b.start_weftd()?;
            std::thread::sleep(Duration::from_secs(1));
            let pids = b.weftd_pids();
            let before: Vec<f64> = pids.iter().map(|&p| rss_kib(p)).collect();
            let server = b.ips.server_mesh.clone();
            let hold = b.spawn(
                "client-mesh",
                &format!(
                    "{} loadgen hold {server}:{ECHO_PORT} {connections}",
                    b.loadgen.display()
                ),
                "hold",
            )?;
            let out = b.dir.join("client-mesh-hold.out");
            let started = Instant::now();
            while !weft_tests::netns::read(&out).contains("held") {
                if started.elapsed() > Duration::from_secs(120) {
                    bail!(
                        "{connections} connections were not all up after 120 s: {}",
                        weft_tests::netns::read(b.dir.join("client-mesh-hold.err"))
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(1));
            let per: f64 = pids
                .iter()
                .zip(&before)
                .map(|(&p, &b0)| (rss_kib(p) - b0) / connections as f64)
                .fold(0.0, f64::max);
            drop(hold);
            runs.push(per);
        }
        eprintln!("{connections} connections: {runs:.2?} KiB each");
        r.per_connection_kib.push((connections, runs));
    }
    b.stop_weftd();
    b.start_weftd()
}

pub fn control_path(b: &mut Bench, r: &mut Results) -> anyhow::Result<()> {
    eprintln!("== mesh-file reload: 10 000 workloads, 1 000 services, 1 000 policies");
    let reloads = |b: &Bench| {
        b.log("node1")
            .lines()
            .filter(|l| l.contains("mesh state updated"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // Run 0 loads the large mesh over the small one: every item is new, a whole parse. Then
    // each run adds one workload, as an edit does, so most items are as they were.
    for run in 0..=RUNS {
        let seen = reloads(b).len();
        b.write_mesh(10_000 + run)?;
        let started = Instant::now();
        let line = loop {
            if let Some(l) = reloads(b).get(seen) {
                break l.clone();
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "weftd did not reload the mesh file {}:\n{}",
                    b.dir.join("mesh.yaml").display(),
                    b.log("node1")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let field = |name: &str| -> f64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let ms = field("load_ms") + field("apply_ms");
        if run == 0 {
            eprintln!("whole file: {ms:.1} ms");
            r.first_load_ms = ms;
        } else {
            eprintln!("run {run}, one workload added: {ms:.1} ms");
            r.reload_ms.push(ms);
        }
    }
    b.write_mesh(0)
}

/// `cargo bench -p weft-core` (criterion): (benchmark, ns per call).
pub fn criterion() -> anyhow::Result<Vec<(String, f64)>> {
    eprintln!("== per-connection functions (criterion)");
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "bench",
            "-p",
            "weft-core",
            "--bench",
            "per_connection",
            "--",
            "--output-format",
            "bencher",
        ])
        .current_dir(crate::workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("cargo bench -p weft-core failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            // "test NAME ... bench:       1,234 ns/iter (+/- 56)"
            let rest = l.strip_prefix("test ")?;
            let (name, rest) = rest.split_once(" ... bench:")?;
            let ns = rest.split_whitespace().next()?.replace(',', "");
            Some((name.trim().to_string(), ns.parse().ok()?))
        })
        .collect();
    if results.is_empty() {
        bail!("no benchmark results in the criterion output:\n{text}");
    }
    Ok(results)
}
