//! `cargo xtask build-ebpf [--check]`: compile `ebpf/capture.c` into the object weftd loads.
//!
//! The object is checked in (`ebpf/capture.bpf.o`) so that `cargo build` works without clang,
//! with the SHA-256 of the source it was built from beside it. `--check` (run by
//! `cargo xtask test`) fails when the source changed without the object being rebuilt, and
//! proves the source still compiles with this machine's clang.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

pub const TOOLS: &[(&str, &str)] = &[("clang-19", "clang-19"), ("llvm-strip-19", "llvm-19")];

fn ebpf_dir() -> PathBuf {
    crate::workspace_root().join("ebpf")
}

pub fn source_hash(src: &Path) -> anyhow::Result<String> {
    let text = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    Ok(format!("{:x}", Sha256::digest(&text)))
}

/// Compiles `capture.c` to `out`. Paths in the debug info are made relative so the object does
/// not depend on where the repository is checked out.
fn compile(out: &Path) -> anyhow::Result<()> {
    let dir = ebpf_dir();
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new("clang-19")
        .current_dir(&dir)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{arch_include}"))
        .arg(format!("-fdebug-prefix-map={}=.", dir.display()))
        .args(["-c", "capture.c", "-o"])
        .arg(out)
        .status()
        .context("running clang-19")?;
    if !status.success() {
        bail!("clang-19 failed to compile ebpf/capture.c");
    }
    // DWARF is not needed at run time (BTF is kept): strip it to keep the object small.
    let status = Command::new("llvm-strip-19")
        .args(["-g"])
        .arg(out)
        .status()?;
    if !status.success() {
        bail!("llvm-strip-19 failed");
    }
    Ok(())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    crate::tools::ensure(TOOLS)?;
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        crate::tools::ensure(&[("/usr/include/bpf/bpf_helpers.h", "libbpf-dev")])?;
    }
    let dir = ebpf_dir();
    let src = dir.join("capture.c");
    let object = dir.join("capture.bpf.o");
    let recorded = dir.join("capture.bpf.o.sha256");
    let hash = source_hash(&src)?;
    if args.iter().any(|a| a == "--check") {
        let tmp = std::env::temp_dir().join(format!("weft-capture-{}.o", std::process::id()));
        let compiled = compile(&tmp);
        let _ = std::fs::remove_file(&tmp);
        compiled?;
        let was = std::fs::read_to_string(&recorded).unwrap_or_default();
        if was.trim() != hash || !object.exists() {
            bail!(
                "ebpf/capture.bpf.o was not rebuilt after ebpf/capture.c changed: run `cargo xtask build-ebpf` and commit the object"
            );
        }
        eprintln!("ebpf/capture.bpf.o matches ebpf/capture.c ({hash})");
        return Ok(());
    }
    compile(&object)?;
    std::fs::write(&recorded, format!("{hash}\n"))?;
    eprintln!("wrote {} (source {hash})", object.display());
    Ok(())
}
