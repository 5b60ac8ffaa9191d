//! Transparent capture with eBPF. Needs root; see `weft_tests::require_root`.

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

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An unmodified `curl` in an enrolled pod reaches a server outside the mesh through weftd
/// (the server sees weftd's node address, and weftd counts the pod's connection), while the
/// same `curl` from an unenrolled pod goes direct.
#[test]
fn enrolled_pod_connections_are_captured_and_unenrolled_ones_are_not() {
    if !require_root("enrolled_pod_connections_are_captured_and_unenrolled_ones_are_not") {
        return;
    }
    use weft_tests::netns::Topology;
    let id = 41;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let plain = t.pod("node1", "plain", 1, 3).unwrap();
    let ext = t.pod("node1", "ext", 9, 2).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        weft_core::identity::generate_root("test", std::time::Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("root-key.pem"), key).unwrap();
    let mesh = format!(
        r#"ca: {{certFile: root-cert.pem, keyFile: root-key.pem}}
nodes:
  - name: node1
    capture: ebpf
    ebpf: {{cgroup: "{cgroup}", redirectAddress: "{gw}"}}
    listen: {{outbound: "0.0.0.0:15001"}}
workloads:
  - {{name: client, ips: [{client}], node: node1, netns: "{client_ns}"}}
  - {{name: plain, ips: [{plain}], node: node1, mode: none, netns: "{plain_ns}"}}
"#,
        cgroup = t.cgroup.display(),
        gw = t.gateway,
        client_ns = t.ns_path("client").display(),
        plain_ns = t.ns_path("plain").display(),
    );
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();

    let server_log = dir.path().join("server.log");
    let _server = Killed(
        t.exec(
            "ext",
            &format!("exec python3 -u -m http.server 8080 --bind {ext}"),
        )
        .stdout(std::fs::File::create(dir.path().join("server.out")).unwrap())
        .stderr(std::fs::File::create(&server_log).unwrap())
        .spawn()
        .unwrap(),
    );
    let serving = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_to_string(dir.path().join("server.out"))
            .is_ok_and(|o| o.contains("Serving HTTP"))
    });
    assert!(serving, "the outside server did not start");
    let weftd_log = dir.path().join("weftd.log");
    let mut weftd = Killed(
        t.exec(
            "node1",
            &format!(
                "exec {} run --mesh {} --node node1",
                weftd_bin().display(),
                dir.path().join("mesh.yaml").display()
            ),
        )
        .stderr(std::fs::File::create(&weftd_log).unwrap())
        .spawn()
        .unwrap(),
    );
    let logs = || std::fs::read_to_string(&weftd_log).unwrap_or_default();
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        t.exec("node1", "curl -sf http://127.0.0.1:15021/healthz/ready")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        ready,
        "weftd not ready (exit: {:?}):\n{}",
        weftd.0.try_wait(),
        logs()
    );
    assert!(logs().contains("enrolled for capture"), "{}", logs());

    let curl = |pod: &str| {
        let out = t
            .pod_exec(
                pod,
                &format!("curl -s -o /dev/null -w %{{http_code}} --max-time 5 http://{ext}:8080/"),
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("client"), "200", "weftd log:\n{}", logs());
    assert_eq!(curl("plain"), "200");
    let seen = std::fs::read_to_string(&server_log).unwrap();
    assert!(
        seen.contains(&format!("{} - -", t.gateway)),
        "the enrolled pod's request did not come from weftd:\n{seen}"
    );
    assert!(
        seen.contains(&format!("{plain} - -")),
        "the unenrolled pod's request did not go direct:\n{seen}"
    );
    assert!(
        !seen.contains(&format!("{client} - -")),
        "the enrolled pod reached the server directly:\n{seen}"
    );
    let metrics = t
        .exec("node1", "curl -s http://127.0.0.1:15020/metrics")
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_tcp_connections_opened_total")
                && l.contains("reporter=\"source\"")
                && l.contains("source_workload=\"client\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}
