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
    // Capture reports itself: one workload enrolled, one connect redirected (counted by the
    // BPF program), and the attach state in the config dump.
    assert!(
        metrics.contains("weft_capture_enrolled_workloads 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_capture_events_total{event=\"redirected\"} 1"),
        "{metrics}"
    );
    let dump = t
        .exec("node1", "curl -s http://127.0.0.1:15000/config_dump")
        .output()
        .unwrap();
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(
        dump["capture"]["enrolled"],
        serde_json::json!(["default/client"])
    );
    assert_eq!(dump["capture"]["mode"], "ebpf");
    assert!(
        dump["capture"]["attached"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "weft_connect4")
    );
}

/// Enrolment follows the mesh file at run time: enrolling a running pod captures its new
/// connections; unenrolling sends new ones direct while a connection made through weftd
/// before keeps working.
#[test]
fn enrolment_follows_the_mesh_file_and_spares_open_connections() {
    if !require_root("enrolment_follows_the_mesh_file_and_spares_open_connections") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    use weft_tests::netns::Topology;
    let id = 42;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let ext = t.pod("node1", "ext", 9, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        weft_core::identity::generate_root("test", std::time::Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("root-key.pem"), key).unwrap();
    let mesh = |mode: &str| {
        format!(
            r#"ca: {{certFile: root-cert.pem, keyFile: root-key.pem}}
nodes:
  - name: node1
    capture: ebpf
    ebpf: {{cgroup: "{cgroup}", redirectAddress: "{gw}"}}
    listen: {{outbound: "0.0.0.0:15001"}}
workloads:
  - {{name: client, ips: [{client}], node: node1, mode: {mode}, netns: "{ns}"}}
"#,
            cgroup = t.cgroup.display(),
            gw = t.gateway,
            ns = t.ns_path("client").display(),
        )
    };
    let mesh_path = dir.path().join("mesh.yaml");
    let write = |text: String| {
        let tmp = dir.path().join("mesh.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &mesh_path).unwrap();
    };
    write(mesh("none"));

    // The outside server echoes lines and prints who connected.
    let server = r#"
import socket, sys, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], 7000)); l.listen(16); print("listening", flush=True)
def serve(c, a):
    print("from", a[0], flush=True)
    f = c.makefile("rwb", 0)
    for line in f:
        f.write(line)
while True:
    c, a = l.accept(); threading.Thread(target=serve, args=(c, a), daemon=True).start()
"#;
    std::fs::write(dir.path().join("server.py"), server).unwrap();
    let out_path = dir.path().join("server.out");
    let _server = Killed(
        t.exec(
            "ext",
            &format!(
                "exec python3 -u {} {ext}",
                dir.path().join("server.py").display()
            ),
        )
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap(),
    );
    let seen = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let wait = |what: &dyn Fn() -> bool| {
        (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            what()
        })
    };
    assert!(wait(&|| seen().contains("listening")));
    let weftd_log = dir.path().join("weftd.log");
    let _weftd = Killed(
        t.exec(
            "node1",
            &format!(
                "exec {} run --mesh {} --node node1 --reload-interval 100ms",
                weftd_bin().display(),
                mesh_path.display()
            ),
        )
        .stderr(std::fs::File::create(&weftd_log).unwrap())
        .spawn()
        .unwrap(),
    );
    let logs = || std::fs::read_to_string(&weftd_log).unwrap_or_default();
    assert!(wait(&|| logs().contains("weftd started")), "{}", logs());

    // One request from a pod process: connect, send a line, read it back.
    let once = |tag: &str| {
        let out = t
            .pod_exec(
                "client",
                &format!("python3 -c \"import socket; s=socket.create_connection(('{ext}',7000),5); s.sendall(b'{tag}\\n'); print(s.recv(100).decode().strip())\""),
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let from = |who: &str| {
        seen()
            .lines()
            .filter(|l| *l == format!("from {who}"))
            .count()
    };

    assert_eq!(once("direct"), "direct");
    assert_eq!(
        (from(&client), from(&t.gateway)),
        (1, 0),
        "not enrolled yet, but captured:\n{}",
        seen()
    );

    write(mesh("ambient"));
    assert!(
        wait(&|| logs().contains("enrolled for capture")),
        "{}",
        logs()
    );
    assert_eq!(once("captured"), "captured");
    assert_eq!(
        from(&t.gateway),
        1,
        "the enrolled pod's new connection was not captured:\n{}",
        seen()
    );

    // A long-lived connection through weftd, held by a pod process.
    let mut long = t
        .exec(
            "client",
            &format!(
                "echo $$ > {}/cgroup.procs && exec python3 -u -c \"import socket,sys; s=socket.create_connection(('{ext}',7000),5); f=s.makefile('rwb',0)\nfor line in sys.stdin: f.write(line.encode()); print(f.readline().decode().strip(), flush=True)\"",
                t.cgroup.display()
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = long.stdin.take().unwrap();
    let mut lines = BufReader::new(long.stdout.take().unwrap()).lines();
    writeln!(stdin, "before").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "before");
    assert_eq!(from(&t.gateway), 2);

    write(mesh("none"));
    assert!(
        wait(&|| logs().contains("unenrolled from capture")),
        "{}",
        logs()
    );
    assert_eq!(once("direct-again"), "direct-again");
    assert_eq!(
        from(&client),
        2,
        "the unenrolled pod's new connection was still captured:\n{}",
        seen()
    );
    writeln!(stdin, "after").unwrap();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "after",
        "the connection made through weftd broke at unenrolment"
    );
    drop(stdin);
    let _ = long.kill();
    let _ = long.wait();
}

/// Inbound capture: a pod outside the mesh calling enrolled pods on the same node reaches them
/// only through weftd's plaintext listener: a PERMISSIVE pod answers (and sees weftd's node
/// address, not the caller's), a STRICT one refuses.
#[test]
fn plaintext_to_enrolled_pods_is_steered_through_weftd() {
    if !require_root("plaintext_to_enrolled_pods_is_steered_through_weftd") {
        return;
    }
    use weft_tests::netns::Topology;
    let id = 43;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    let open = t.pod("node1", "open", 1, 2).unwrap();
    let strict = t.pod("node1", "strict", 1, 3).unwrap();
    let caller = t.pod("node1", "caller", 1, 4).unwrap();
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
  - {{name: open, ips: [{open}], node: node1, inbound: permissive, netns: "{open_ns}"}}
  - {{name: strict, ips: [{strict}], node: node1, netns: "{strict_ns}"}}
  - {{name: caller, ips: [{caller}], node: node1, mode: none, netns: "{caller_ns}"}}
"#,
        cgroup = t.cgroup.display(),
        gw = t.gateway,
        open_ns = t.ns_path("open").display(),
        strict_ns = t.ns_path("strict").display(),
        caller_ns = t.ns_path("caller").display(),
    );
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let mut servers = Vec::new();
    for (pod, ip) in [("open", &open), ("strict", &strict)] {
        let log = dir.path().join(format!("{pod}.log"));
        servers.push(Killed(
            t.exec(
                pod,
                &format!("exec python3 -u -m http.server 8080 --bind {ip}"),
            )
            .stdout(std::fs::File::create(dir.path().join(format!("{pod}.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        ));
    }
    let up = |pod: &str| {
        std::fs::read_to_string(dir.path().join(format!("{pod}.out")))
            .is_ok_and(|o| o.contains("Serving HTTP"))
    };
    assert!((0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        up("open") && up("strict")
    }));
    let weftd_log = dir.path().join("weftd.log");
    let _weftd = Killed(
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
    assert!(ready, "{}", logs());
    assert!(
        logs().contains("eBPF inbound capture attached"),
        "{}",
        logs()
    );

    let curl = |ip: &str| {
        let out = t
            .pod_exec(
                "caller",
                &format!("curl -s -o /dev/null -w %{{http_code}} --max-time 5 http://{ip}:8080/"),
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let events = || {
        let m = t
            .exec("node1", "curl -s http://127.0.0.1:15020/metrics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&m.stdout)
            .lines()
            .filter(|l| l.starts_with("weft_capture"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let routing = || {
        let o = t
            .exec("node1", "ip rule; ip route show table 100; ss -ltn")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(
        curl(&open),
        "200",
        "{}\n{}\n{}",
        events(),
        routing(),
        logs()
    );
    let seen = std::fs::read_to_string(dir.path().join("open.log")).unwrap();
    assert!(
        seen.contains(&format!("{} - -", t.gateway)),
        "the call did not come through weftd:\n{seen}"
    );
    assert!(
        !seen.contains(&format!("{caller} - -")),
        "the call reached the pod directly:\n{seen}"
    );
    assert_eq!(curl(&strict), "000", "a STRICT pod answered plaintext");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("strict.log")).unwrap(),
        "",
        "the STRICT pod saw the connection"
    );
    assert!(
        logs().contains("refused: workload accepts mutual TLS only (STRICT)"),
        "{}",
        logs()
    );
}

/// The mesh's promise, on the wire: an unmodified `curl` in an enrolled pod on node1 calls a
/// service whose endpoint is an enrolled pod on node2. The reply arrives, both weftd count the
/// connection as mutual TLS with the right principals, and a marker in the request never
/// appears in a packet capture of the link between the nodes; the same request from an
/// unenrolled pod does appear there (so the capture really sees the traffic).
#[test]
fn cross_node_traffic_between_enrolled_pods_is_mutual_tls_on_the_wire() {
    if !require_root("cross_node_traffic_between_enrolled_pods_is_mutual_tls_on_the_wire") {
        return;
    }
    use weft_tests::netns::Topology;
    let id = 44;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    t.node("node2").unwrap();
    t.link_nodes("node1", 1, "node2", 2).unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let plain = t.pod("node1", "plain", 1, 3).unwrap();
    let server = t.pod("node2", "server", 2, 2).unwrap();
    let cgroup2 = t.extra_cgroup("node2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        weft_core::identity::generate_root("test", std::time::Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("root-key.pem"), key).unwrap();
    let vip = format!("10.{id}.100.1");
    let mesh = format!(
        r#"ca: {{certFile: root-cert.pem, keyFile: root-key.pem}}
nodes:
  - name: node1
    capture: ebpf
    ebpf: {{cgroup: "{cg1}", redirectAddress: "{gw}", interfaces: [uplink]}}
    listen: {{outbound: "0.0.0.0:15001"}}
  - name: node2
    capture: ebpf
    ebpf: {{cgroup: "{cg2}", redirectAddress: "{gw}", interfaces: [uplink]}}
    listen: {{outbound: "0.0.0.0:15001"}}
workloads:
  - {{name: client, serviceAccount: client, ips: [{client}], node: node1, netns: "{client_ns}"}}
  - {{name: plain, ips: [{plain}], node: node1, mode: none, netns: "{plain_ns}"}}
  - {{name: server, serviceAccount: server, ips: [{server}], node: node2, inbound: permissive, netns: "{server_ns}", labels: {{app: server}}}}
services:
  - {{name: server, vips: [{vip}], ports: [{{port: 80, targetPort: 8080}}], selector: {{app: server}}}}
"#,
        cg1 = t.cgroup.display(),
        cg2 = cgroup2.display(),
        gw = t.gateway,
        client_ns = t.ns_path("client").display(),
        plain_ns = t.ns_path("plain").display(),
        server_ns = t.ns_path("server").display(),
    );
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let _server = Killed(
        t.exec(
            "server",
            &format!("exec python3 -u -m http.server 8080 --bind {server}"),
        )
        .stdout(std::fs::File::create(dir.path().join("server.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    let mut weftds = Vec::new();
    for node in ["node1", "node2"] {
        let log = dir.path().join(format!("{node}.log"));
        weftds.push(Killed(
            t.exec(
                node,
                &format!(
                    "exec {} run --mesh {} --node {node}",
                    weftd_bin().display(),
                    dir.path().join("mesh.yaml").display()
                ),
            )
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        ));
    }
    let logs = |node: &str| {
        std::fs::read_to_string(dir.path().join(format!("{node}.log"))).unwrap_or_default()
    };
    for node in ["node1", "node2"] {
        let ready = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            t.exec(node, "curl -sf http://127.0.0.1:15021/healthz/ready")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(ready, "{node} not ready:\n{}", logs(node));
    }
    assert!((0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_to_string(dir.path().join("server.out"))
            .is_ok_and(|o| o.contains("Serving HTTP"))
    }));

    // Capture the link between the nodes while the requests run.
    let pcap = dir.path().join("link.pcap");
    let mut dump = Killed(
        t.exec(
            "node1",
            &format!("exec tcpdump -i uplink -s 0 -U -w {} tcp", pcap.display()),
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump must be installed"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let curl = |pod: &str, url: &str, marker: &str| {
        let out = t
            .pod_exec(pod, &format!("curl -s -o /dev/null -w %{{http_code}} --max-time 5 -H 'x-marker: {marker}' {url}"))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mesh_marker = "SECRET-THROUGH-THE-MESH-7f3a";
    let plain_marker = "VISIBLE-WITHOUT-THE-MESH-91c2";
    assert_eq!(
        curl("client", &format!("http://{vip}/"), mesh_marker),
        "200",
        "node1:\n{}\nnode2:\n{}",
        logs("node1"),
        logs("node2")
    );
    assert_eq!(
        curl("plain", &format!("http://{server}:8080/"), plain_marker),
        "200",
        "node2:\n{}",
        logs("node2")
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = dump.0.kill();
    let _ = dump.0.wait();
    let captured = std::fs::read(&pcap).unwrap();
    let contains = |needle: &str| {
        captured
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(
        contains(plain_marker),
        "the capture did not see the unenrolled pod's request ({} bytes)",
        captured.len()
    );
    assert!(
        !contains(mesh_marker),
        "the enrolled pod's request crossed the link in clear text"
    );

    for (node, reporter) in [("node1", "source"), ("node2", "destination")] {
        let m = t
            .exec(node, "curl -s http://127.0.0.1:15020/metrics")
            .output()
            .unwrap();
        let m = String::from_utf8_lossy(&m.stdout);
        assert!(
            m.lines()
                .any(|l| l.starts_with("weft_tcp_connections_opened_total")
                    && l.contains(&format!("reporter=\"{reporter}\""))
                    && l.contains(
                        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\""
                    )
                    && l.contains(
                        "destination_principal=\"spiffe://cluster.local/ns/default/sa/server\""
                    )
                    && l.contains("connection_security_policy=\"mutual_tls\"")),
            "{node}:\n{m}"
        );
    }
}

/// Writes a root CA into `dir` for a mesh file that names it.
fn write_ca(dir: &std::path::Path) {
    let (cert, key) =
        weft_core::identity::generate_root("test", std::time::Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.join("root-cert.pem"), cert).unwrap();
    std::fs::write(dir.join("root-key.pem"), key).unwrap();
}

/// `python3 -m http.server` on `ip:8080` in `pod`, once it serves; its access log is
/// `<dir>/<pod>.log`.
fn http_server(
    t: &weft_tests::netns::Topology,
    dir: &std::path::Path,
    pod: &str,
    ip: &str,
) -> Killed {
    let out = dir.join(format!("{pod}.out"));
    let server = Killed(
        t.exec(
            pod,
            &format!("exec python3 -u -m http.server 8080 --bind {ip}"),
        )
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{pod}.log"))).unwrap())
        .spawn()
        .unwrap(),
    );
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_to_string(&out).is_ok_and(|o| o.contains("Serving HTTP"))
    });
    assert!(up, "http server in {pod} did not start");
    server
}

/// weftd for `node` in its namespace, once ready; its log is `<dir>/<node>.log`.
fn start_weftd(t: &weft_tests::netns::Topology, dir: &std::path::Path, node: &str) -> Killed {
    let log = dir.join(format!("{node}.log"));
    let mesh = dir.join("mesh.yaml");
    let w = Killed(
        t.exec(
            node,
            &format!(
                "exec {} run --mesh {} --node {node}",
                weftd_bin().display(),
                mesh.display()
            ),
        )
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        t.exec(node, "curl -sf http://127.0.0.1:15021/healthz/ready")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        ready,
        "{node} not ready:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    w
}

fn node_metrics(t: &weft_tests::netns::Topology, node: &str) -> String {
    let m = t
        .exec(node, "curl -s http://127.0.0.1:15020/metrics")
        .output()
        .unwrap();
    String::from_utf8_lossy(&m.stdout).into_owned()
}

/// Enrolled to enrolled on one node: the tunnel to the node's own HBONE listener is made local
/// by the capture mark, and the connection is mutual TLS on both sides of it.
#[test]
fn same_node_traffic_between_enrolled_pods_is_mutual_tls() {
    if !require_root("same_node_traffic_between_enrolled_pods_is_mutual_tls") {
        return;
    }
    use weft_tests::netns::Topology;
    let id = 45;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let server = t.pod("node1", "server", 1, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_ca(dir.path());
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            r#"ca: {{certFile: root-cert.pem, keyFile: root-key.pem}}
nodes:
  - {{name: node1, capture: ebpf, ebpf: {{cgroup: "{cg}", redirectAddress: "{gw}"}}, listen: {{outbound: "0.0.0.0:15001"}}}}
workloads:
  - {{name: client, serviceAccount: client, ips: [{client}], node: node1, netns: "{cns}"}}
  - {{name: server, serviceAccount: server, ips: [{server}], node: node1, netns: "{sns}"}}
"#,
            cg = t.cgroup.display(),
            gw = t.gateway,
            cns = t.ns_path("client").display(),
            sns = t.ns_path("server").display(),
        ),
    )
    .unwrap();
    let _server = http_server(&t, dir.path(), "server", &server);
    let _weftd = start_weftd(&t, dir.path(), "node1");
    let out = t
        .pod_exec(
            "client",
            &format!("curl -s -o /dev/null -w %{{http_code}} --max-time 5 http://{server}:8080/"),
        )
        .unwrap();
    let logs = std::fs::read_to_string(dir.path().join("node1.log")).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{logs}");
    let m = node_metrics(&t, "node1");
    for reporter in ["source", "destination"] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("weft_tcp_connections_opened_total")
                    && l.contains(&format!("reporter=\"{reporter}\""))
                    && l.contains(
                        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\""
                    )
                    && l.contains(
                        "destination_principal=\"spiffe://cluster.local/ns/default/sa/server\""
                    )
                    && l.contains("connection_security_policy=\"mutual_tls\"")),
            "{reporter}:\n{m}\n{logs}"
        );
    }
}
