//! Puts the capture BPF object in OUT_DIR: compiled from `ebpf/capture.c` when clang-19 is on
//! the machine, else the checked-in `ebpf/capture.bpf.o`, so `cargo build` needs no clang.
//! `cargo xtask build-ebpf --check` (in the test command) keeps the two in step.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let ebpf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("capture.bpf.o");
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("capture.c").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("capture.bpf.o").display()
    );
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let compiled = Command::new("clang-19")
        .current_dir(&ebpf)
        .args(["-O2", "-g", "-target", "bpf", "-Wall"])
        .arg(format!("-I{arch_include}"))
        .arg(format!("-fdebug-prefix-map={}=.", ebpf.display()))
        .args(["-c", "capture.c", "-o"])
        .arg(&out)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !compiled {
        std::fs::copy(ebpf.join("capture.bpf.o"), &out).expect("ebpf/capture.bpf.o is missing");
    }
}
