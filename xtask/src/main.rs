//! `cargo xtask`: the project's commands.
//!
//! - `cargo xtask test`: everything CI checks: formatting, clippy, unit and end-to-end tests.
//! - `cargo xtask manifests`: the CRDs under `deploy/`, generated from the Rust types.
//! - `cargo xtask demo`: two weftd nodes in network namespaces capturing unmodified pods' traffic
//!   with eBPF and carrying it over mutual-TLS HBONE (`--loopback`: on loopback, no root).

mod bench;
mod chart;
mod demo;
mod ebpf;
mod loopback_demo;
mod manifests;
mod tools;

use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("build-ebpf") => ebpf::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("manifests") => manifests::run(&args[1..]),
        // What the benchmarks run inside pods (release build; see bench::loadgen).
        Some("loadgen") => bench::loadgen::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo|bench|build-ebpf|manifests>\n  test        run formatting, clippy and the whole test suite\n  demo        run a local two-node mesh (network namespaces, eBPF capture; root) and send traffic through it\n              --once: exit after the requests; --loopback: on loopback without capture or root\n  bench l4    measure weft against the direct path (root; writes docs/benchmarks.md)\n  build-ebpf  compile ebpf/capture.c into ebpf/capture.bpf.o (--check: verify it is current)\n  manifests   write the CRDs under deploy/ from the Rust types (--check: fail when stale)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a cargo command in the workspace root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    tools::ensure(&[
        ("openssl", "openssl"),
        ("tcpdump", "tcpdump"),
        ("curl", "curl"),
        ("python3", "python3"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ])?;
    cargo(&["fmt", "--all", "--check"])?;
    ebpf::run(&["--check".to_string()])?;
    manifests::run(&["--check".to_string()])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Benchmarks are not run here, but they must keep building.
    cargo(&["bench", "--workspace", "--no-run"])?;
    // The end-to-end tests run the real daemon binary. Building every target at once unifies
    // dependency features as the test run does, so the test run rebuilds nothing.
    cargo(&["build", "--workspace", "--all-targets"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    // The README's main command is part of the suite: the demo must keep working.
    if tools::is_root() {
        eprintln!("+ cargo xtask demo --once --no-build");
        demo::run(&["--once".to_string(), "--no-build".to_string()])
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("the demo needs root; CI must run the suite as root")
    } else {
        eprintln!("skipped: `cargo xtask demo --once` (needs root)");
        Ok(())
    }
}
