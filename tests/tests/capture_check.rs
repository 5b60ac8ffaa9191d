//! `weftd capture check`: can this machine capture? Needs root; see `weft_tests::require_root`.

use std::process::Command;

use weft_tests::{require_root, weftd_bin};

/// `weftd capture check` loads every capture program through this kernel's verifier. The bpf
/// file system it needs is mounted in a private mount namespace, so the host's mounts are
/// untouched.
#[test]
fn capture_check_loads_every_program_into_the_kernel() {
    if !require_root("capture_check_loads_every_program_into_the_kernel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "mount -t bpf bpf {dir} && exec {weftd} capture check --bpffs {dir}",
        dir = dir.path().display(),
        weftd = weftd_bin().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "capture check failed:\n{text}");
    for program in [
        "weft_connect4",
        "weft_connect6",
        "weft_getpeername4",
        "weft_getpeername6",
        "weft_sockops",
        "weft_getsockopt",
        "weft_ingress",
        "weft_sk_lookup",
    ] {
        assert!(
            text.contains(&format!("ok   program {program} accepted by the verifier")),
            "{text}"
        );
    }
}

/// Without a bpf file system the check fails and says how to get one.
#[test]
fn capture_check_names_what_is_missing() {
    if !require_root("capture_check_names_what_is_missing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(weftd_bin())
        .args(["capture", "check", "--bpffs"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("is not a bpf file system: mount one with `mount -t bpf bpf"),
        "{text}"
    );
}
