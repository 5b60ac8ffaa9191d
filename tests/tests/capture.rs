//! Transparent capture with eBPF, end to end: network namespaces as nodes and pods (veth pairs
//! with /32 routes like a ptp CNI), pod processes in a dedicated cgroup2 directory, real weftd,
//! curl, python servers and tcpdump. Needs root; see `weft_tests::require_root`.

use std::time::{Duration, Instant};

use weft_tests::netns::{
    Killed, Topology, connections_from, contains, opened, read, wait_for, write_mesh,
};
use weft_tests::require_root;

const CLIENT: &str = "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"";
const SERVER: &str = "destination_principal=\"spiffe://cluster.local/ns/default/sa/server\"";
const MTLS: &str = "connection_security_policy=\"mutual_tls\"";

/// An unmodified `curl` in an enrolled pod reaches a server outside the mesh through weftd
/// (the server sees weftd's node address, and weftd counts the pod's connection), while the
/// same `curl` from an unenrolled pod goes direct.
#[test]
fn enrolled_pod_connections_are_captured_and_unenrolled_ones_are_not() {
    if !require_root("enrolled_pod_connections_are_captured_and_unenrolled_ones_are_not") {
        return;
    }
    let mut t = Topology::new(41).unwrap();
    t.node("node1").unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let plain = t.pod("node1", "plain", 1, 3).unwrap();
    let ext = t.pod("node1", "ext", 9, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let workloads = t.pod_entry("client", &client, "node1", "")
        + &t.pod_entry("plain", &plain, "node1", ", mode: none");
    write_mesh(
        dir.path(),
        &t.ebpf_node("node1", &t.cgroup, ""),
        &workloads,
        "",
    )
    .unwrap();
    let _server = t.http_server(dir.path(), "ext", &ext).unwrap();
    let _weftd = t.start_weftd(dir.path(), "node1", "").unwrap();
    let logs = || read(dir.path().join("node1.log"));
    assert!(logs().contains("enrolled for capture"), "{}", logs());

    let url = format!("http://{ext}:8080/");
    assert_eq!(t.curl_status("client", &url, ""), "200", "{}", logs());
    assert_eq!(t.curl_status("plain", &url, ""), "200");
    let seen = read(dir.path().join("ext.log"));
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
    let metrics = t.metrics("node1");
    assert!(
        opened(
            &metrics,
            &["reporter=\"source\"", "source_workload=\"client\""]
        ),
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
    let dump: serde_json::Value =
        serde_json::from_str(&t.node_get("node1", "http://127.0.0.1:15000/config_dump")).unwrap();
    assert_eq!(
        dump["capture"]["enrolled"],
        serde_json::json!(["default/client"])
    );
    assert_eq!(dump["capture"]["mode"], "ebpf");
    let attached = |program: &str| {
        dump["capture"]["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["program"] == program && a["attached"] == true)
    };
    assert!(attached("weft_connect4"), "{dump}");
    assert!(attached("weft_ingress"), "{dump}");
    assert!(
        metrics.contains(&format!(
            "weft_capture_attached{{program=\"weft_connect4\",target=\"cgroup:{}\"}} 1",
            t.cgroup.display()
        )),
        "{metrics}"
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
    let mut t = Topology::new(42).unwrap();
    t.node("node1").unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let ext = t.pod("node1", "ext", 9, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = t.ebpf_node("node1", &t.cgroup, "");
    let mesh = |mode: &str| {
        write_mesh(
            dir.path(),
            &node,
            &t.pod_entry("client", &client, "node1", &format!(", mode: {mode}")),
            "",
        )
        .unwrap()
    };
    mesh("none");

    // The outside server echoes lines and prints who connected.
    let (_server, out_path) = t.line_echo_server(dir.path(), "ext", &ext, 7000).unwrap();
    let seen = || read(&out_path);
    let _weftd = t
        .start_weftd(dir.path(), "node1", "--reload-interval 100ms")
        .unwrap();
    let logs = || read(dir.path().join("node1.log"));

    let once = |tag: &str| t.line_once("client", &ext, 7000, tag);
    let from = |who: &str| connections_from(&seen(), who);

    assert_eq!(once("direct"), "direct");
    assert_eq!(
        (from(&client), from(&t.gateway)),
        (1, 0),
        "not enrolled yet, but captured:\n{}",
        seen()
    );

    mesh("ambient");
    assert!(
        wait_for(|| logs().contains("enrolled for capture")),
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
    let mut long = t.line_client("client", &ext, 7000).unwrap();
    assert_eq!(long.send("before").as_deref(), Some("before"));
    assert_eq!(from(&t.gateway), 2);

    mesh("none");
    assert!(
        wait_for(|| logs().contains("unenrolled from capture")),
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
    assert_eq!(
        long.send("after").as_deref(),
        Some("after"),
        "the connection made through weftd broke at unenrolment"
    );
}

/// Inbound capture: a pod outside the mesh calling enrolled pods on the same node reaches them
/// only through weftd's plaintext listener: a PERMISSIVE pod answers (and sees weftd's node
/// address, not the caller's), a STRICT one refuses.
#[test]
fn plaintext_to_enrolled_pods_is_steered_through_weftd() {
    if !require_root("plaintext_to_enrolled_pods_is_steered_through_weftd") {
        return;
    }
    let mut t = Topology::new(43).unwrap();
    t.node("node1").unwrap();
    let open = t.pod("node1", "open", 1, 2).unwrap();
    let strict = t.pod("node1", "strict", 1, 3).unwrap();
    let caller = t.pod("node1", "caller", 1, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let workloads = t.pod_entry("open", &open, "node1", ", inbound: permissive")
        + &t.pod_entry("strict", &strict, "node1", "")
        + &t.pod_entry("caller", &caller, "node1", ", mode: none");
    write_mesh(
        dir.path(),
        &t.ebpf_node("node1", &t.cgroup, ""),
        &workloads,
        "",
    )
    .unwrap();
    let _open = t.http_server(dir.path(), "open", &open).unwrap();
    let _strict = t.http_server(dir.path(), "strict", &strict).unwrap();
    let _weftd = t.start_weftd(dir.path(), "node1", "").unwrap();
    let logs = || read(dir.path().join("node1.log"));
    assert!(
        logs().contains("eBPF inbound capture attached"),
        "{}",
        logs()
    );
    let diagnose = || {
        let events: Vec<String> = t
            .metrics("node1")
            .lines()
            .filter(|l| l.starts_with("weft_capture"))
            .map(String::from)
            .collect();
        let routing = t
            .exec("node1", "ip rule; ip route show table 100; ss -ltn")
            .output()
            .unwrap();
        format!(
            "{}\n{}\n{}",
            events.join("\n"),
            String::from_utf8_lossy(&routing.stdout),
            logs()
        )
    };

    assert_eq!(
        t.curl_status("caller", &format!("http://{open}:8080/"), ""),
        "200",
        "{}",
        diagnose()
    );
    let seen = read(dir.path().join("open.log"));
    assert!(
        seen.contains(&format!("{} - -", t.gateway)),
        "the call did not come through weftd:\n{seen}"
    );
    assert!(
        !seen.contains(&format!("{caller} - -")),
        "the call reached the pod directly:\n{seen}"
    );
    assert_eq!(
        t.curl_status("caller", &format!("http://{strict}:8080/"), ""),
        "000",
        "a STRICT pod answered plaintext"
    );
    assert_eq!(
        read(dir.path().join("strict.log")),
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
    let id = 44;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    t.node("node2").unwrap();
    let (node1_ip, _) = t.link_nodes("node1", 1, "node2", 2).unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let plain = t.pod("node1", "plain", 1, 3).unwrap();
    let server = t.pod("node2", "server", 2, 2).unwrap();
    let other = t.pod("node2", "other", 2, 3).unwrap();
    let cgroup2 = t.extra_cgroup("node2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vip = format!("10.{id}.100.1");
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    let workloads = t.pod_entry("client", &client, "node1", "")
        + &t.pod_entry("plain", &plain, "node1", ", mode: none")
        + &t.pod_entry("server", &server, "node2", ", inbound: permissive")
        + &t.pod_entry("other", &other, "node2", ", mode: none");
    let services = format!(
        "services:\n  - {{name: server, vips: [{vip}], ports: [{{port: 80, targetPort: 8080}}], selector: {{app: server}}}}\n"
    );
    write_mesh(dir.path(), &nodes, &workloads, &services).unwrap();
    let _server = t.http_server(dir.path(), "server", &server).unwrap();
    let _other = t.http_server(dir.path(), "other", &other).unwrap();
    let _weftd1 = t.start_weftd(dir.path(), "node1", "").unwrap();
    let _weftd2 = t.start_weftd(dir.path(), "node2", "").unwrap();
    let logs = |node: &str| read(dir.path().join(format!("{node}.log")));

    // To a pod outside the mesh on the other node: plain passthrough from node1's weftd.
    assert_eq!(
        t.curl_status("client", &format!("http://{other}:8080/"), ""),
        "200",
        "{}",
        logs("node1")
    );
    let seen = read(dir.path().join("other.log"));
    assert!(
        seen.contains(&format!("{node1_ip} - -")) && !seen.contains(&format!("{client} - -")),
        "the enrolled pod's call to an unenrolled pod did not pass through weftd:\n{seen}"
    );

    // Capture the link between the nodes while the requests run.
    let dump = t.capture_uplink(dir.path(), "node1").unwrap();
    let mesh_marker = "SECRET-THROUGH-THE-MESH-7f3a";
    let plain_marker = "VISIBLE-WITHOUT-THE-MESH-91c2";
    let status = t.curl_status(
        "client",
        &format!("http://{vip}/"),
        &format!("-H 'x-marker: {mesh_marker}'"),
    );
    assert_eq!(
        status,
        "200",
        "node1:\n{}\nnode2:\n{}",
        logs("node1"),
        logs("node2")
    );
    let status = t.curl_status(
        "plain",
        &format!("http://{server}:8080/"),
        &format!("-H 'x-marker: {plain_marker}'"),
    );
    assert_eq!(status, "200", "node2:\n{}", logs("node2"));
    let captured = dump.finish(Duration::from_millis(500));
    assert!(
        contains(&captured, plain_marker),
        "the capture did not see the unenrolled pod's request ({} bytes)",
        captured.len()
    );
    assert!(
        !contains(&captured, mesh_marker),
        "the enrolled pod's request crossed the link in clear text"
    );

    for (node, reporter) in [
        ("node1", "reporter=\"source\""),
        ("node2", "reporter=\"destination\""),
    ] {
        let m = t.metrics(node);
        assert!(
            opened(&m, &[reporter, CLIENT, SERVER, MTLS]),
            "{node}:\n{m}"
        );
    }
}

/// Enrolled to enrolled on one node: the tunnel to the node's own HBONE listener is made local
/// by the capture mark, and the connection is mutual TLS on both sides of it.
#[test]
fn same_node_traffic_between_enrolled_pods_is_mutual_tls() {
    if !require_root("same_node_traffic_between_enrolled_pods_is_mutual_tls") {
        return;
    }
    let (t, dir, _server, _weftd) = same_node(45, "");
    let server = t.pod_ip("server");
    assert_eq!(
        t.curl_status("client", &format!("http://{server}:8080/"), ""),
        "200",
        "{}",
        read(dir.path().join("node1.log"))
    );
    let m = t.metrics("node1");
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        assert!(
            opened(&m, &[reporter, CLIENT, SERVER, MTLS]),
            "{reporter}:\n{m}"
        );
    }
}

/// `client` and `server` enrolled on one node, with `policies` (a YAML list) in the mesh.
fn same_node(id: u8, policies: &str) -> (Topology, tempfile::TempDir, Killed, Killed) {
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let server = t.pod("node1", "server", 1, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let workloads =
        t.pod_entry("client", &client, "node1", "") + &t.pod_entry("server", &server, "node1", "");
    let rest = if policies.is_empty() {
        String::new()
    } else {
        format!("policies:\n{policies}\n")
    };
    write_mesh(
        dir.path(),
        &t.ebpf_node("node1", &t.cgroup, ""),
        &workloads,
        &rest,
    )
    .unwrap();
    let s = t.http_server(dir.path(), "server", &server).unwrap();
    let w = t.start_weftd(dir.path(), "node1", "").unwrap();
    (t, dir, s, w)
}

/// A DENY between enrolled pods: the client fails fast and the server never sees it.
#[test]
fn deny_between_enrolled_pods_fails_fast_and_server_never_sees_it() {
    if !require_root("deny_between_enrolled_pods_fails_fast_and_server_never_sees_it") {
        return;
    }
    let deny = r#"  - {name: deny-client, namespace: default, selector: {matchLabels: {app: server}}, action: DENY,
     rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]}]}"#;
    let (t, dir, _server, _weftd) = same_node(46, deny);
    let start = Instant::now();
    let status = t.curl_status(
        "client",
        &format!("http://{}:8080/", t.pod_ip("server")),
        "",
    );
    assert_eq!(status, "000", "a denied request got an answer");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "denial took {:?}: no fast failure",
        start.elapsed()
    );
    assert_eq!(
        read(dir.path().join("server.log")),
        "",
        "the server saw a denied connection"
    );
    let m = t.metrics("node1");
    assert!(
        m.lines()
            .any(|l| l.starts_with("weft_tcp_connections_failed_total")
                && l.contains("reason=\"denied\"")),
        "{m}"
    );
}

/// A pod's own loopback traffic, and weftd's own connections, are never captured: no loops.
#[test]
fn pod_loopback_and_weftd_own_connections_are_not_captured() {
    if !require_root("pod_loopback_and_weftd_own_connections_are_not_captured") {
        return;
    }
    let (t, dir, _server, _weftd) = same_node(47, "");
    // A server on the pod's loopback, called from inside the (enrolled) pod.
    let _local = t.http_server(dir.path(), "client", "127.0.0.1").unwrap();
    assert_eq!(t.curl_status("client", "http://127.0.0.1:8080/", ""), "200");
    let redirected = || {
        t.metrics("node1")
            .lines()
            .find(|l| l.starts_with("weft_capture_events_total{event=\"redirected\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(redirected(), Some(0), "loopback traffic was redirected");
    // One real mesh connection: exactly one redirect, though weftd itself opened further
    // connections (to the node's HBONE listener and to the server) on the way.
    assert_eq!(
        t.curl_status(
            "client",
            &format!("http://{}:8080/", t.pod_ip("server")),
            ""
        ),
        "200"
    );
    assert_eq!(
        redirected(),
        Some(1),
        "weftd's own connections were captured"
    );
}
