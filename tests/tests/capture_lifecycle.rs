//! Capture across weftd's life: a crash fails closed and a restart takes over the pinned
//! state; unenrolment drains inbound flows; `weftd capture uninstall` removes everything.
//! Root, network namespaces, real weftd, curl, python and tcpdump, as in `capture.rs`.

use std::time::{Duration, Instant};

use weft_tests::metric_sum;
use weft_tests::netns::{Topology, connections_from, contains, read, wait_for, write_mesh};
use weft_tests::{require_root, weftd_bin};

const OPENED: &str = "weft_tcp_connections_opened_total";

/// `kill -9` of both weftd: an enrolled pod's connection fails closed (refused at once, and
/// nothing of it crosses the link between the nodes in clear text) and a connection to an
/// enrolled pod from outside the mesh never reaches it. weftd started again takes over the
/// pinned state, and the same pods, never recreated, talk through the mesh again.
#[test]
fn killed_weftd_fails_closed_and_restarted_weftd_takes_over() {
    if !require_root("killed_weftd_fails_closed_and_restarted_weftd_takes_over") {
        return;
    }
    let id = 48;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    t.node("node2").unwrap();
    t.link_nodes("node1", 1, "node2", 2).unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let plain = t.pod("node1", "plain", 1, 3).unwrap();
    let server = t.pod("node2", "server", 2, 2).unwrap();
    let cgroup2 = t.extra_cgroup("node2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    let workloads = t.pod_entry("client", &client, "node1", "")
        + &t.pod_entry("plain", &plain, "node1", ", mode: none")
        + &t.pod_entry("server", &server, "node2", ", inbound: permissive");
    let allow_plain = "policies:\n  - {name: all, namespace: default, selector: {matchLabels: {app: server}}, action: ALLOW, rules: [{}]}\n";
    write_mesh(dir.path(), &nodes, &workloads, allow_plain).unwrap();
    let _server = t.http_server(dir.path(), "server", &server).unwrap();
    let mut weftd1 = t.start_weftd(dir.path(), "node1", "").unwrap();
    let mut weftd2 = t.start_weftd(dir.path(), "node2", "").unwrap();
    let logs = |node: &str| read(dir.path().join(format!("{node}.log")));
    let url = format!("http://{server}:8080/");
    assert_eq!(
        t.curl_status("client", &url, ""),
        "200",
        "{}",
        logs("node1")
    );
    assert_eq!(t.curl_status("plain", &url, ""), "200", "{}", logs("node2"));
    let served = || read(dir.path().join("server.log")).lines().count();
    let before = served();

    for w in [&mut weftd1, &mut weftd2] {
        w.0.kill().unwrap();
        w.0.wait().unwrap();
    }
    let dump = t.capture_uplink(dir.path(), "node1").unwrap();
    let marker = "SECRET-WHILE-WEFTD-IS-DOWN-5d1e";
    let start = Instant::now();
    let status = t.curl_status("client", &url, &format!("-H 'x-marker: {marker}'"));
    assert_eq!(status, "000", "an enrolled pod got through with weftd down");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the enrolled pod's connect hung for {:?} instead of failing",
        start.elapsed()
    );
    assert_eq!(
        t.curl_status("plain", &url, ""),
        "000",
        "a plaintext caller reached an enrolled pod with weftd down"
    );
    let captured = dump.finish(Duration::from_millis(300));
    assert!(
        !contains(&captured, marker),
        "the enrolled pod's request crossed the link in clear text while weftd was down"
    );
    assert_eq!(
        served(),
        before,
        "the server saw a connection while weftd was down"
    );
    assert!(
        std::fs::read_dir(t.pin_path("node1").join("links"))
            .unwrap()
            .next()
            .is_some(),
        "no links stayed pinned"
    );

    // Restart: the same pods, the same processes.
    let _weftd1 = t.start_weftd(dir.path(), "node1", "").unwrap();
    let _weftd2 = t.start_weftd(dir.path(), "node2", "").unwrap();
    for node in ["node1", "node2"] {
        assert!(
            logs(node).contains("taking over the capture state a previous weftd pinned"),
            "{}",
            logs(node)
        );
    }
    assert_eq!(
        t.curl_status("client", &url, ""),
        "200",
        "{}",
        logs("node1")
    );
    assert_eq!(served(), before + 1);
    let m = t.metrics("node2");
    let mtls = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(metric_sum(&m, OPENED, &mtls), 1.0, "{m}");
    let dump: serde_json::Value =
        serde_json::from_str(&t.node_get("node1", "http://127.0.0.1:15000/config_dump")).unwrap();
    assert_eq!(dump["capture"]["tookOver"]["maps"], true, "{dump}");
    assert_eq!(dump["capture"]["tookOver"]["enrolledPods"], 1, "{dump}");
    // The restarted weftd replaced the links rather than adding to them.
    let links: Vec<String> = std::fs::read_dir(t.pin_path("node1").join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(links.iter().all(|l| !l.starts_with("new-")), "{links:?}");
}

/// Unenrolling a pod keeps inbound flows weftd already carries for it (the pod's IP stays
/// "draining"), even with early demux off in the node, where only the classifier's mark
/// keeps such packets away from the pod; new connections go direct.
#[test]
fn unenrolment_drains_inbound_flows_through_weftd() {
    if !require_root("unenrolment_drains_inbound_flows_through_weftd") {
        return;
    }
    let mut t = Topology::new(49).unwrap();
    t.node("node1").unwrap();
    // Without early demux, a packet of an established flow is routed like any other: only
    // the mark sends it to weftd's socket rather than on to the pod.
    t.exec(
        "node1",
        "sysctl -qw net.ipv4.ip_early_demux=0 net.ipv4.tcp_early_demux=0",
    )
    .status()
    .unwrap();
    let server = t.pod("node1", "server", 1, 2).unwrap();
    let caller = t.pod("node1", "caller", 1, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = t.ebpf_node("node1", &t.cgroup, "");
    let mesh = |server_entry: bool, mode: &str| {
        let mut workloads = t.pod_entry("caller", &caller, "node1", ", mode: none");
        if server_entry {
            workloads += &t.pod_entry(
                "server",
                &server,
                "node1",
                &format!(", mode: {mode}, inbound: permissive"),
            );
        }
        let allow = "policies:\n  - {name: all, namespace: default, selector: {matchLabels: {app: server}}, action: ALLOW, rules: [{}]}\n";
        write_mesh(dir.path(), &node, &workloads, allow).unwrap();
    };
    mesh(true, "ambient");
    let (_echo, out) = t
        .line_echo_server(dir.path(), "server", &server, 7000)
        .unwrap();
    let _weftd = t
        .start_weftd(dir.path(), "node1", "--reload-interval 100ms")
        .unwrap();
    let logs = || read(dir.path().join("node1.log"));
    let from = |who: &str| connections_from(&read(&out), who);

    let mut long = t.line_client("caller", &server, 7000).unwrap();
    assert_eq!(long.send("through weftd").as_deref(), Some("through weftd"));
    assert_eq!(
        from(&t.gateway),
        1,
        "not steered through weftd:\n{}",
        read(&out)
    );

    mesh(true, "none");
    assert!(
        wait_for(|| logs().contains("unenrolled from capture")),
        "{}",
        logs()
    );
    assert_eq!(
        long.send("while draining").as_deref(),
        Some("while draining"),
        "the flow through weftd broke at unenrolment:\n{}",
        logs()
    );
    assert_eq!(t.line_once("caller", &server, 7000, "new"), "new");
    assert_eq!(
        from(&caller),
        1,
        "a new connection did not go direct:\n{}",
        read(&out)
    );
    let dump = || -> serde_json::Value {
        serde_json::from_str(&t.node_get("node1", "http://127.0.0.1:15000/config_dump"))
            .unwrap_or_default()
    };
    assert_eq!(
        dump()["capture"]["draining"],
        serde_json::json!(["default/server"])
    );

    // Once the workload leaves the mesh, nothing is kept for it.
    mesh(false, "none");
    assert!(
        wait_for(|| dump()["capture"]["draining"] == serde_json::json!([])),
        "{}",
        dump()
    );
}

/// `weftd capture uninstall` removes the pinned links and maps, the ip rule and the local
/// route table; enrolled pods' connections go direct afterwards, and a second run finds
/// nothing to remove.
#[test]
fn capture_uninstall_removes_everything_it_installed() {
    if !require_root("capture_uninstall_removes_everything_it_installed") {
        return;
    }
    let mut t = Topology::new(50).unwrap();
    t.node("node1").unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let ext = t.pod("node1", "ext", 9, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_mesh(
        dir.path(),
        &t.ebpf_node("node1", &t.cgroup, ""),
        &t.pod_entry("client", &client, "node1", ""),
        "",
    )
    .unwrap();
    let (_echo, out) = t.line_echo_server(dir.path(), "ext", &ext, 7000).unwrap();
    let mut weftd = t.start_weftd(dir.path(), "node1", "").unwrap();
    assert_eq!(t.line_once("client", &ext, 7000, "mesh"), "mesh");
    assert_eq!(connections_from(&read(&out), &t.gateway), 1);
    let routing = || {
        let out = t
            .exec("node1", "ip rule; echo ---; ip route show table 100")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        routing().contains("fwmark 0x100/0xfff lookup 100"),
        "{}",
        routing()
    );

    // A stopped weftd leaves capture in place, failing closed.
    let _ = std::process::Command::new("kill")
        .arg(weftd.0.id().to_string())
        .status();
    weftd.0.wait().unwrap();
    assert_eq!(t.line_once("client", &ext, 7000, "stopped"), "");

    let uninstall = || {
        let out = t
            .exec(
                "node1",
                &format!(
                    "{} capture uninstall --pin-path {}",
                    weftd_bin().display(),
                    t.pin_path("node1").display()
                ),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = uninstall();
    for what in [
        "unpinned link cgroup-weft_connect4",
        "unpinned link netns-weft_sk_lookup",
        "unpinned link tcx-v12",
        "unpinned map pods_by_netns",
        "removed the capture ip rule",
        "removed the capture local route table",
    ] {
        assert!(first.contains(what), "missing {what:?} in:\n{first}");
    }
    assert!(!t.pin_path("node1").exists());
    let after = routing();
    assert!(!after.contains("fwmark"), "{after}");
    assert!(!after.contains("local default"), "{after}");
    assert_eq!(t.line_once("client", &ext, 7000, "direct"), "direct");
    assert_eq!(connections_from(&read(&out), &client), 1, "{}", read(&out));
    assert!(uninstall().contains("nothing to remove"));
}
