//! Each figure of the L7 benchmarks, run by run. Medians and the table are `report`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use super::{L7, Route, SETTLE};
use crate::bench::figures::{cpu_seconds, rss_kib};

/// Seconds per throughput run.
const SECONDS: u64 = 5;
/// Seconds per fixed-rate latency run: a p99 of 5 s at 1000 req/s rests on its 50 slowest
/// requests, and one stall of the VM moved it by hundreds of microseconds between runs.
pub const LATENCY_SECONDS: u64 = 10;
/// Requests in flight in the throughput runs: HTTP/1.1 as that many connections, HTTP/2 as
/// `H2_CONNECTIONS` connections of `CONCURRENCY / H2_CONNECTIONS` streams.
pub const CONCURRENCY: u32 = 64;
pub const H2_CONNECTIONS: u32 = 4;
/// Kept connections of the fixed-rate latency runs.
pub const LATENCY_CONNECTIONS: u32 = 16;
pub const RATES: [u32; 2] = [1000, 10_000];
pub const SCALE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }
}

/// One throughput run of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub proto: Proto,
    pub route: Route,
    pub rps: f64,
    /// Requests per CPU-second of the path's L7 proxy (none on the direct and L4 paths).
    pub per_cpu_s: Option<f64>,
    /// Peak resident memory of the L7 proxy during the run, MiB.
    pub rss_mib: Option<f64>,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rate: u32,
    pub route: Route,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub achieved: f64,
    /// The same over the requests that no CPU stall touched (`bench::stalls`).
    pub outside_stalls_p50_us: f64,
    pub outside_stalls_p99_us: f64,
    /// CPU stalls seen during the run, and their total length.
    pub stalls: f64,
    pub stalled_ms: f64,
}

/// One run of the scale figure: the mesh with `extra` routes and policies.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub extra: usize,
    /// The waypoint's load + apply of that mesh file, ms.
    pub reload_ms: f64,
    pub p99_us: f64,
    pub p50_us: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub envoy: String,
    /// (proxy, MiB per sample) of weft's waypoint and Envoy, idle after warm-up.
    pub idle_rss_mib: Vec<(Route, Vec<f64>)>,
    pub load: Vec<Load>,
    pub latency: Vec<Latency>,
    pub scale: Vec<Scale>,
}

/// Resident memory of the two waypoints after 1000 requests each, sampled once per run.
pub fn idle_memory(b: &mut L7, r: &mut Results) -> anyhow::Result<()> {
    eprintln!("== waypoint RSS idle (after 1000 requests each)");
    for route in [Route::Weft, Route::Envoy] {
        let (pod, addr) = route.ends(&b.ips);
        b.run_in(
            pod,
            &format!("h2load -n 1000 -c 4 --h1 http://{addr}/ > /dev/null"),
        )?;
    }
    std::thread::sleep(Duration::from_secs(1));
    for route in [Route::Weft, Route::Envoy] {
        let pid = b.proxy_pid(route).context("a waypoint path")?;
        let samples: Vec<f64> = (0..b.runs)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(200));
                rss_kib(pid) / 1024.0
            })
            .collect();
        eprintln!("{}: {samples:?} MiB", route.name());
        r.idle_rss_mib.push((route, samples));
    }
    Ok(())
}

/// What h2load printed: (req/s, succeeded, failed + errored + non-2xx).
fn parse_h2load(out: &str) -> anyhow::Result<(f64, u64, u64)> {
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no `finished in` line in h2load's output:\n{out}"))?;
    let numbers = |prefix: &str| -> Vec<(String, u64)> {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|l| {
                l.split(", ")
                    .filter_map(|part| {
                        let (n, what) = part.trim().split_once(' ')?;
                        Some((what.to_string(), n.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let get = |v: &[(String, u64)], k: &str| v.iter().find(|(w, _)| w == k).map_or(0, |(_, n)| *n);
    let req = numbers("requests: ");
    let codes = numbers("status codes: ");
    let ok = get(&codes, "2xx");
    let bad = get(&req, "failed")
        + get(&req, "errored")
        + get(&req, "timeout")
        + get(&codes, "3xx")
        + get(&codes, "4xx")
        + get(&codes, "5xx");
    Ok((rps, ok, bad))
}

/// Peak RSS of `pid` while `f` runs, sampled every 50 ms.
fn peak_rss<T>(pid: Option<u32>, f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let Some(pid) = pid else { return (f(), None) };
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0.0_f64;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(rss_kib(pid)) / 1024.0
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        (out, sampler.join().ok())
    })
}

/// Max requests per second at `CONCURRENCY` in flight (h2load, closed loop), the L7 proxy's
/// CPU per request and its peak memory, HTTP/1.1 and HTTP/2.
pub fn throughput(b: &mut L7, r: &mut Results) -> anyhow::Result<()> {
    eprintln!(
        "== max req/s at {CONCURRENCY} in flight (h2load, {} runs of {SECONDS} s per path and protocol)",
        b.runs
    );
    for proto in [Proto::H1, Proto::H2] {
        let flags = match proto {
            Proto::H1 => format!("--h1 -c {CONCURRENCY} -m 1"),
            Proto::H2 => format!("-c {H2_CONNECTIONS} -m {}", CONCURRENCY / H2_CONNECTIONS),
        };
        for run in 0..b.runs {
            for route in b.order(run) {
                let (pod, addr) = route.ends(&b.ips);
                let pid = b.proxy_pid(route);
                let cpu0 = pid.map(cpu_seconds);
                let (out, rss) = peak_rss(pid, || {
                    b.run_in(pod, &format!("h2load -D {SECONDS} {flags} http://{addr}/"))
                });
                let out = out?;
                let cpu = pid.map(cpu_seconds).zip(cpu0).map(|(a, z)| a - z);
                let (rps, ok, bad) = parse_h2load(&out)?;
                if bad * 100 > ok.max(1) {
                    bail!(
                        "{} {}: {bad} of {} requests failed:\n{out}",
                        proto.name(),
                        route.name(),
                        ok + bad
                    );
                }
                let per_cpu_s = cpu.filter(|c| *c > 0.0).map(|c| ok as f64 / c);
                eprintln!(
                    "{} run {run} {}: {rps:.0} req/s, {} req per proxy CPU-s, peak RSS {}",
                    proto.name(),
                    route.name(),
                    per_cpu_s.map_or("-".into(), |v| format!("{v:.0}")),
                    rss.map_or("-".into(), |v| format!("{v:.1} MiB")),
                );
                r.load.push(Load {
                    proto,
                    route,
                    rps,
                    per_cpu_s,
                    rss_mib: rss,
                    failed: bad,
                });
                std::thread::sleep(SETTLE);
            }
        }
    }
    Ok(())
}

pub(super) fn latency_run(b: &L7, route: Route, rate: u32) -> anyhow::Result<Value> {
    let (pod, addr) = route.ends(&b.ips);
    b.loadgen(
        pod,
        &format!("http-latency {addr} {rate} {LATENCY_SECONDS} {LATENCY_CONNECTIONS}"),
    )
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// p50/p99 at fixed rates (HTTP/1.1 on kept connections, from each request's intended send
/// time: `loadgen http-latency`).
pub fn latency(b: &mut L7, r: &mut Results) -> anyhow::Result<()> {
    eprintln!(
        "== latency at {RATES:?} req/s over {LATENCY_CONNECTIONS} connections ({} runs of {LATENCY_SECONDS} s per path)",
        b.runs
    );
    for rate in RATES {
        for run in 0..b.runs {
            for route in b.order(run) {
                let v = latency_run(b, route, rate)?;
                eprintln!("{rate} req/s run {run} {}: {v}", route.name());
                r.latency.push(Latency {
                    rate,
                    route,
                    p50_us: num(&v, "p50_us"),
                    p90_us: num(&v, "p90_us"),
                    p99_us: num(&v, "p99_us"),
                    max_us: num(&v, "max_us"),
                    achieved: num(&v, "rate"),
                    outside_stalls_p50_us: num(&v["outside_stalls"], "p50_us"),
                    outside_stalls_p99_us: num(&v["outside_stalls"], "p99_us"),
                    stalls: num(&v, "stalls"),
                    stalled_ms: num(&v, "stalled_ms"),
                });
                std::thread::sleep(SETTLE);
            }
        }
    }
    Ok(())
}

/// The waypoint's reload lines so far.
fn reloads(b: &L7) -> Vec<String> {
    b.waypoint_log()
        .lines()
        .filter(|l| l.contains("mesh state updated"))
        .map(String::from)
        .collect()
}

fn field(line: &str, name: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `SCALE` more routes and `SCALE` more authorization policies on the weft path's Service:
/// what the waypoint takes to reload such a mesh file, and what they add to p99 at 1000 req/s.
/// The small and the large mesh alternate, each run reloading one over the other.
pub fn scale(b: &mut L7, r: &mut Results) -> anyhow::Result<()> {
    eprintln!("== {SCALE} routes and {SCALE} policies: waypoint reload, p99 at 1000 req/s");
    for run in 0..b.runs {
        let sizes = if run % 2 == 0 { [SCALE, 0] } else { [0, SCALE] };
        for extra in sizes {
            let seen = reloads(b).len();
            b.write_mesh(extra)?;
            let started = Instant::now();
            let line = loop {
                if let Some(l) = reloads(b).get(seen) {
                    break l.clone();
                }
                if started.elapsed() > Duration::from_secs(60) {
                    bail!(
                        "the waypoint did not reload the mesh file:\n{}",
                        b.waypoint_log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let reload_ms = field(&line, "load_ms") + field(&line, "apply_ms");
            // weftd reloads the same file; let both settle before measuring.
            std::thread::sleep(Duration::from_secs(1));
            let v = latency_run(b, Route::Weft, 1000)?;
            eprintln!("run {run}, {extra} more routes and policies: reload {reload_ms:.1} ms, {v}");
            r.scale.push(Scale {
                extra,
                reload_ms,
                p99_us: num(&v, "p99_us"),
                p50_us: num(&v, "p50_us"),
            });
        }
    }
    b.write_mesh(0)
}

/// `perf record` of each waypoint under the throughput runs' load (HTTP/1.1, then HTTP/2),
/// its report in `target/bench/l7-profile-<waypoint>-<protocol>.txt`. Where a target is
/// missed, this is where to look first.
pub fn profile(b: &L7) -> anyhow::Result<()> {
    crate::tools::ensure(&[("perf", "linux-perf")])?;
    let out_dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    for route in [Route::Weft, Route::Envoy] {
        for (proto, flags) in [
            ("h1", format!("--h1 -c {CONCURRENCY} -m 1")),
            (
                "h2",
                format!("-c {H2_CONNECTIONS} -m {}", CONCURRENCY / H2_CONNECTIONS),
            ),
        ] {
            let pid = b.proxy_pid(route).context("a waypoint path")?;
            let name = if route == Route::Weft {
                "weft"
            } else {
                "envoy"
            };
            // Kept beside the report, for `perf report -g` on call chains.
            let data = out_dir.join(format!("l7-profile-{name}-{proto}.data"));
            let mut perf = std::process::Command::new("perf")
                // DWARF call chains: release builds keep no frame pointers.
                .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-o"])
                .arg(&data)
                .args(["-p", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            let (pod, addr) = route.ends(&b.ips);
            let out = b.run_in(pod, &format!("h2load -D {SECONDS} {flags} http://{addr}/"));
            // SAFETY: kill(2) on the child's own pid; SIGINT makes perf write its file.
            unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
            perf.wait()?;
            let (rps, _, _) = parse_h2load(&out?)?;
            let report = std::process::Command::new("perf")
                .args([
                    "report",
                    "--no-children",
                    "--percent-limit",
                    "0.5",
                    "--stdio",
                    "-g",
                    "none",
                    "-i",
                ])
                .arg(&data)
                .output()?;
            let file = out_dir.join(format!("l7-profile-{name}-{proto}.txt"));
            std::fs::write(&file, &report.stdout)?;
            eprintln!(
                "{name} {proto}: {rps:.0} req/s, profile in {}",
                file.display()
            );
        }
    }
    Ok(())
}
