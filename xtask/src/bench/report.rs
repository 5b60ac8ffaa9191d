//! The table of the L4 benchmarks: medians of the runs, ratios against the direct path of the
//! same run, and each target; printed, written to `docs/benchmarks.md`, and every run's raw
//! numbers to `target/bench/l4.json`.

use std::fmt::Write;
use std::time::Duration;

use super::RUNS;
use super::figures::{Percentiles, Results};

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

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn write(
    r: &Results,
    criterion: &[(String, f64)],
    took: Duration,
    features: Option<&str>,
    complete: bool,
) -> anyhow::Result<()> {
    let mut t = String::new();
    let row = |t: &mut String, cells: &[String]| {
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    };
    row(
        &mut t,
        &["figure", "direct", "weft", "weft vs direct", "target", ""].map(String::from),
    );
    row(&mut t, &["---"; 6].map(String::from));

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
        row(
            &mut t,
            &[
                "weftd CPU per GB, 8 streams (both nodes)".into(),
                String::new(),
                format!("{:.2} s/GB", median(&r.weftd_cpu_s_per_gb)),
                String::new(),
                "report".into(),
                String::new(),
            ],
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
        let (target, ok) = if *workloads == 1_000 {
            ("<= 20 MiB", Some(m <= 20.0))
        } else {
            ("report", None)
        };
        row(
            &mut t,
            &[
                format!("weftd RSS idle, mesh of {workloads} workloads"),
                String::new(),
                format!("{m:.1} MiB"),
                String::new(),
                target.into(),
                ok.map(verdict).unwrap_or("").into(),
            ],
        );
    }
    for (conns, runs) in &r.per_connection_kib {
        let m = median(runs);
        row(
            &mut t,
            &[
                format!("weftd memory per proxied connection, {conns} open"),
                String::new(),
                format!("{m:.1} KiB"),
                String::new(),
                "<= 16 KiB".into(),
                verdict(m <= 16.0).into(),
            ],
        );
    }
    if !r.reload_ms.is_empty() {
        let reload = median(&r.reload_ms);
        row(
            &mut t,
            &[
                "mesh-file reload after an edit, 10 000 workloads / 1 000 services / 1 000 policies"
                .into(),
                String::new(),
                format!("{reload:.0} ms"),
                String::new(),
                "<= 200 ms".into(),
                verdict(reload <= 200.0).into(),
            ],
        );
    }
    if !r.reload_ms.is_empty() {
        row(
            &mut t,
            &[
                "mesh-file load of the whole 10 000 / 1 000 / 1 000 mesh (one run)".into(),
                String::new(),
                format!("{:.0} ms", r.first_load_ms),
                String::new(),
                "report".into(),
                String::new(),
            ],
        );
    }
    for (name, ns) in criterion {
        let per_call = !name.starts_with("control_path");
        row(
            &mut t,
            &[
                format!("{name} (criterion)"),
                String::new(),
                if *ns >= 1e6 {
                    format!("{:.1} ms", ns / 1e6)
                } else {
                    format!("{ns:.0} ns")
                },
                String::new(),
                if per_call { "<= 1 us" } else { "report" }.into(),
                if per_call { verdict(*ns <= 1000.0) } else { "" }.into(),
            ],
        );
    }

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
  mutual-TLS HBONE. Every figure is the median of {RUNS} runs, the two paths alternating within
  each run; ratios are of medians from this run. Latency is measured from each request's
  intended send time on a fixed schedule (no coordinated omission). The load generator is
  `xtask loadgen` (release); throughput is iperf3. weftd logs at `info` (access log on).
  Raw runs: `target/bench/l4.json`.

{t}",
        date = sh("date -u +%Y-%m-%dT%H:%MZ"),
        cores = sh("nproc"),
        mem = sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        kernel = sh("uname -r"),
    );
    if let Some(f) = features {
        println!("\nweftd built with features: {f}");
    }
    println!("\n{t}");
    let root = crate::workspace_root();
    if complete {
        std::fs::write(root.join("docs/benchmarks.md"), doc)?;
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
