//! The table of the L4 benchmarks: medians of the runs, ratios against the direct path of the
//! same run, and each target; printed, written to `docs/benchmarks.md`, and every run's raw
//! numbers to `target/bench/l4.json`.

use std::fmt::Write;
use std::time::Duration;

use super::RUNS;
use super::figures::{Outside, PerPath, Percentiles, Results};

pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn med(runs: &[Percentiles], f: impl Fn(&Percentiles) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

/// One markdown table row.
fn row(t: &mut String, cells: &[String]) {
    let _ = writeln!(t, "| {} |", cells.join(" | "));
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

pub fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Rewrites one bench's part of `docs/benchmarks.md` (between its own markers), keeping the
/// other benches' parts: `bench l4` and `bench l7` each own one and run separately.
pub fn write_part(part: &str, text: &str) -> anyhow::Result<()> {
    let path = crate::workspace_root().join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = (
        format!("<!-- begin: cargo xtask bench {part} -->"),
        format!("<!-- end: cargo xtask bench {part} -->"),
    );
    let block = format!("{begin}\n{}\n{end}\n", text.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{block}{}",
            &old[..b],
            &old[e + end.len()..].trim_start_matches('\n')
        ),
        // A file from before the parts had markers is the L4 table alone.
        _ if part == "l4" && !old.contains("<!-- begin:") => block,
        _ if old.trim().is_empty() => block,
        _ => format!("{}\n{block}", old.trim_end()),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

pub fn write(
    r: &Results,
    criterion: &[(String, f64)],
    took: Duration,
    features: Option<&str>,
    complete: bool,
) -> anyhow::Result<()> {
    let mut t = String::new();
    row(
        &mut t,
        &["figure", "direct", "weft", "weft vs direct", "target", ""].map(String::from),
    );
    row(&mut t, &["---"; 6].map(String::from));
    // A figure of weft alone (no direct path, no ratio); `target` is (text, met), or none for a
    // figure that is only reported.
    let weft_row = |t: &mut String, name: String, value: String, target: Option<(&str, bool)>| {
        let (target, ok) = target.map_or(("report", ""), |(text, met)| (text, verdict(met)));
        row(
            t,
            &[
                name,
                String::new(),
                value,
                String::new(),
                target.into(),
                ok.into(),
            ],
        );
    };

    for (name, runs) in [
        ("1 stream", &r.throughput_1),
        ("8 streams", &r.throughput_8),
    ] {
        // A partial run (--only) shows only the figures it ran.
        if runs.weft.is_empty() {
            continue;
        }
        let (d, w) = (median(&runs.direct), median(&runs.weft));
        let (target, ok) = if name == "1 stream" {
            (">= 0.45 x direct", Some(w / d >= 0.45))
        } else {
            ("report", None)
        };
        row(
            &mut t,
            &[
                format!("throughput, {name} (Gbit/s)"),
                format!("{d:.2}"),
                format!("{w:.2}"),
                format!("{:.2} x", w / d),
                target.into(),
                ok.map(verdict).unwrap_or("").into(),
            ],
        );
    }
    if !r.weftd_cpu_s_per_gb.is_empty() {
        weft_row(
            &mut t,
            "weftd CPU per GB, 8 streams (both nodes)".into(),
            format!("{:.2} s/GB", median(&r.weftd_cpu_s_per_gb)),
            None,
        );
    }
    for (rate, runs) in &r.latency {
        let q = |runs: &[Percentiles]| {
            [
                med(runs, |p| p.p50_us),
                med(runs, |p| p.p90_us),
                med(runs, |p| p.p99_us),
                med(runs, |p| p.max_us),
            ]
        };
        let (d, w) = (q(&runs.direct), q(&runs.weft));
        let show = |v: [f64; 4]| format!("{:.0} / {:.0} / {:.0} / {:.0}", v[0], v[1], v[2], v[3]);
        let (added50, added99) = (w[0] - d[0], w[2] - d[2]);
        row(
            &mut t,
            &[
                format!("latency at {rate} req/s, p50 / p90 / p99 / max (us)"),
                show(d),
                show(w),
                format!("+{added50:.0} us p50, +{added99:.0} us p99"),
                "added p50 <= 100 us, p99 <= 300 us".into(),
                verdict(added50 <= 100.0 && added99 <= 300.0).into(),
            ],
        );
        let outside = |runs: &[Percentiles]| {
            let o = |pick: fn(&Outside) -> f64| {
                med(runs, |p| p.outside_stalls.as_ref().map_or(f64::NAN, pick))
            };
            [
                o(|o| o.p50_us),
                o(|o| o.p99_us),
                med(runs, |p| p.stalls as f64),
            ]
        };
        let (d, w) = (outside(&runs.direct), outside(&runs.weft));
        let show = |v: [f64; 3]| format!("{:.0} / {:.0}; {:.0}", v[0], v[1], v[2]);
        row(
            &mut t,
            &[
                "same, requests outside CPU stalls, p50 / p99 (us); stalls seen".into(),
                show(d),
                show(w),
                format!("+{:.0} us p50, +{:.0} us p99", w[0] - d[0], w[1] - d[1]),
                "report".into(),
                String::new(),
            ],
        );
    }
    let c = &r.connection_rate;
    if !c.weft.is_empty() {
        let (d, w) = (med(&c.direct, |p| p.rate), med(&c.weft, |p| p.rate));
        row(
            &mut t,
            &[
                "connection setup (connections/s; p50 / p99 us)".into(),
                format!(
                    "{d:.0}; {:.0} / {:.0}",
                    med(&c.direct, |p| p.p50_us),
                    med(&c.direct, |p| p.p99_us)
                ),
                format!(
                    "{w:.0}; {:.0} / {:.0}",
                    med(&c.weft, |p| p.p50_us),
                    med(&c.weft, |p| p.p99_us)
                ),
                format!("{:.2} x", w / d),
                ">= 0.5 x direct".into(),
                verdict(w / d >= 0.5).into(),
            ],
        );
    }
    for (workloads, runs) in &r.idle_rss_mib {
        let m = median(runs);
        weft_row(
            &mut t,
            format!("weftd RSS idle, mesh of {workloads} workloads"),
            format!("{m:.1} MiB"),
            (*workloads == 1_000).then_some(("<= 20 MiB", m <= 20.0)),
        );
    }
    for (conns, runs) in &r.per_connection_kib {
        let m = median(runs);
        weft_row(
            &mut t,
            format!("weftd memory per proxied connection, {conns} open"),
            format!("{m:.1} KiB"),
            Some(("<= 16 KiB", m <= 16.0)),
        );
    }
    if !r.reload_ms.is_empty() {
        let reload = median(&r.reload_ms);
        weft_row(
            &mut t,
            "mesh-file reload after an edit, 10 000 workloads / 1 000 services / 1 000 policies"
                .into(),
            format!("{reload:.0} ms"),
            Some(("<= 200 ms", reload <= 200.0)),
        );
        weft_row(
            &mut t,
            "mesh-file load of the whole 10 000 / 1 000 / 1 000 mesh (one run)".into(),
            format!("{:.0} ms", r.first_load_ms),
            None,
        );
    }
    for (name, ns) in criterion {
        let per_call = !name.starts_with("control_path");
        let value = if *ns >= 1e6 {
            format!("{:.1} ms", ns / 1e6)
        } else {
            format!("{ns:.0} ns")
        };
        weft_row(
            &mut t,
            format!("{name} (criterion)"),
            value,
            per_call.then_some(("<= 1 us", *ns <= 1000.0)),
        );
    }

    let floor = floor_table(r);
    let commit = sh("git rev-parse --short HEAD");
    let dirty = if sh("git status --porcelain").is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let doc = format!(
        "# L4 benchmarks

Written by `cargo xtask bench l4` (as root). Do not edit by hand: run it again.

- date: {date}
- commit: {commit}{dirty}
- machine: {cores} cores ({cpu}), {mem}, kernel {kernel}
- command: `cargo xtask bench l4` ({took:.0?} including the release build)
- method: the end-to-end tests' topology (two node namespaces on a bridge, pods on /32 veth
  routes, weftd with eBPF capture, release build). *direct*: an unenrolled pod on node1 to an
  unenrolled pod on node2. *weft*: an enrolled pod to an enrolled pod, through both weftd over
  mutual-TLS HBONE (*two relays*: below). Every figure is the median of {RUNS} runs, the
  routes alternating within each run; ratios are of medians from this run. Latency is
  measured from each request's intended send time on a fixed schedule (no coordinated
  omission); the row under each latency row leaves out the requests that a CPU stall (the
  hypervisor not running a vCPU for over 0.5 ms, seen by a real-time probe thread per CPU;
  docs/architecture.md, *CPU stalls*) touched, and counts the stalls. The load generator is
  `xtask loadgen` (release); throughput is iperf3. weftd logs at `info` (access log on).
  Raw runs: `target/bench/l4.json`.

{t}
## Against the floor of any proxy per node

*two relays*: the unenrolled client through a plain TCP relay on node1 and one on node2
(`xtask loadgen relay`: tokio, 64 KiB buffers, TCP_NODELAY; no TLS, no HTTP/2, no policy) to the
unenrolled server, in the same runs. It is the part of weft's cost that comes from having a
user-space proxy on each node at all on this machine: two more TCP connections, two more
processes to wake per direction. The rest (*weft vs relays*) is what weft adds on top: mutual
TLS, HTTP/2 framing, capture, policy, telemetry.

{floor}",
        date = sh("date -u +%Y-%m-%dT%H:%MZ"),
        cores = sh("nproc"),
        mem = sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        kernel = sh("uname -r"),
    );
    if let Some(f) = features {
        println!("\nweftd built with features: {f}");
    }
    println!("\n{t}\n{floor}");
    let root = crate::workspace_root();
    if complete {
        write_part("l4", &doc)?;
    }
    let raw = root.join("target/bench");
    std::fs::create_dir_all(&raw)?;
    std::fs::write(
        raw.join("l4.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "commit": commit,
            "weftd_features": features,
            "results": r,
            "criterion": criterion,
        }))?,
    )?;
    println!(
        "wrote {}{}",
        if complete {
            "docs/benchmarks.md and "
        } else {
            ""
        },
        raw.join("l4.json").display()
    );
    Ok(())
}

fn has_all<T>(p: &PerPath<T>) -> bool {
    !p.direct.is_empty() && !p.relays.is_empty() && !p.weft.is_empty()
}

/// Direct, two plain relays and weft side by side, for the figures that have all three.
fn floor_table(r: &Results) -> String {
    let mut t = String::new();
    let mut line = |cells: [String; 6]| row(&mut t, &cells);
    for (name, runs) in [
        ("1 stream", &r.throughput_1),
        ("8 streams", &r.throughput_8),
    ] {
        if !has_all(runs) {
            continue;
        }
        let [d, x, w] = [&runs.direct, &runs.relays, &runs.weft].map(|v| median(v));
        line([
            format!("throughput, {name} (Gbit/s)"),
            format!("{d:.2}"),
            format!("{x:.2}"),
            format!("{w:.2}"),
            format!("{:.2} x", x / d),
            format!("{:.2} x", w / x),
        ]);
    }
    for (rate, runs) in &r.latency {
        if !has_all(runs) {
            continue;
        }
        let [d, x, w] = [&runs.direct, &runs.relays, &runs.weft]
            .map(|v| [med(v, |p| p.p50_us), med(v, |p| p.p99_us)]);
        let show = |v: [f64; 2]| format!("{:.0} / {:.0}", v[0], v[1]);
        let added =
            |a: [f64; 2], b: [f64; 2]| format!("+{:.0} / +{:.0} us", a[0] - b[0], a[1] - b[1]);
        line([
            format!("latency at {rate} req/s, p50 / p99 (us)"),
            show(d),
            show(x),
            show(w),
            added(x, d),
            added(w, x),
        ]);
    }
    let c = &r.connection_rate;
    if has_all(c) {
        let [d, x, w] = [&c.direct, &c.relays, &c.weft].map(|v| med(v, |p| p.rate));
        line([
            "connection setup (connections/s)".into(),
            format!("{d:.0}"),
            format!("{x:.0}"),
            format!("{w:.0}"),
            format!("{:.2} x", x / d),
            format!("{:.2} x", w / x),
        ]);
    }
    // A partial run without these figures shows no empty table.
    if t.is_empty() {
        return t;
    }
    let mut head = String::new();
    row(
        &mut head,
        &[
            "figure",
            "direct",
            "two relays",
            "weft",
            "relays vs direct",
            "weft vs relays",
        ]
        .map(String::from),
    );
    row(&mut head, &["---"; 6].map(String::from));
    head + &t
}
