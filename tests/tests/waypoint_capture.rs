//! The waypoint on the real data path: network namespaces as nodes and pods, eBPF capture in
//! both weftd, an unmodified `curl` in an enrolled pod on node1 calling a service bound to a
//! waypoint that runs as a pod (never captured, `mode: none`) on node2, in front of two
//! versions of a python HTTP server on node2. Needs root; see `weft_tests::require_root`.

use std::time::Duration;

use weft_tests::netns::{Topology, read, write_mesh};
use weft_tests::{require_root, waypoint_bin};

#[test]
fn curl_through_weftd_the_waypoint_and_weftd_with_ebpf_capture() {
    if !require_root("curl_through_weftd_the_waypoint_and_weftd_with_ebpf_capture") {
        return;
    }
    let id = 63;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    t.node("node2").unwrap();
    t.link_nodes("node1", 1, "node2", 2).unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let v1 = t.pod("node2", "web-v1", 2, 2).unwrap();
    let v2 = t.pod("node2", "web-v2", 2, 3).unwrap();
    let wp_ip = t.pod("node2", "waypoint", 2, 4).unwrap();
    let cgroup2 = t.extra_cgroup("node2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vip = format!("10.{id}.100.1");
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    let web = |pod: &str, ip: &str, version: &str| {
        format!(
            "  - {{name: {pod}, serviceAccount: {pod}, ips: [{ip}], node: node2, netns: \"{}\", labels: {{app: web, version: {version}}}}}\n",
            t.ns_path(pod).display()
        )
    };
    let workloads = t.pod_entry("client", &client, "node1", "")
        + &web("web-v1", &v1, "v1")
        + &web("web-v2", &v2, "v2")
        + &t.pod_entry("waypoint", &wp_ip, "node2", ", mode: none");
    let rest = format!(
        r#"services:
  - {{name: web, vips: [{vip}], ports: [{{port: 80, targetPort: 8080}}], selector: {{app: web}}, waypoint: waypoint}}
  - {{name: web-v1, vips: [10.{id}.100.2], ports: [{{port: 80, targetPort: 8080, appProtocol: http}}], selector: {{version: v1}}}}
  - {{name: web-v2, vips: [10.{id}.100.3], ports: [{{port: 80, targetPort: 8080, appProtocol: http}}], selector: {{version: v2}}}}
  - {{name: waypoint, vips: [10.{id}.100.4], ports: [{{port: 15008}}], selector: {{app: waypoint}}}}
policies:
  - {{name: no-delete, namespace: default, targetRefs: [{{kind: Service, name: web}}], action: DENY,
      rules: [{{to: [{{operation: {{methods: [DELETE]}}}}]}}]}}
routes:
  - name: web
    namespace: default
    parentRefs: [{{kind: Service, name: web, port: 80}}]
    rules:
      - matches: [{{headers: [{{name: x-version, value: v2}}]}}]
        backendRefs: [{{name: web-v2, port: 80}}]
      - backendRefs: [{{name: web-v1, port: 80, weight: 90}}, {{name: web-v2, port: 80, weight: 10}}]
"#
    );
    write_mesh(dir.path(), &nodes, &workloads, &rest).unwrap();
    let _v1 = t.http_server(dir.path(), "web-v1", &v1).unwrap();
    let _v2 = t.http_server(dir.path(), "web-v2", &v2).unwrap();
    let _weftd1 = t.start_weftd(dir.path(), "node1", "").unwrap();
    let _weftd2 = t.start_weftd(dir.path(), "node2", "").unwrap();
    let wp_log = dir.path().join("waypoint.log");
    let waypoint = t
        .start_waypoint(dir.path(), "waypoint", &waypoint_bin(), "")
        .unwrap();
    let logs = || {
        format!(
            "node1:\n{}\nwaypoint:\n{}\nnode2:\n{}",
            read(dir.path().join("node1.log")),
            read(&wp_log),
            read(dir.path().join("node2.log"))
        )
    };
    let body = |extra: &str, url: &str| {
        let out = t
            .pod_exec("client", &format!("curl -s --max-time 30 {extra} '{url}'"))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // 1000 requests on one kept connection (curl's URL globbing), split 90/10.
    let all = body("", &format!("http://{vip}/?n=[1-1000]"));
    let (n1, n2) = (
        all.matches("hello from web-v1").count(),
        all.matches("hello from web-v2").count(),
    );
    assert_eq!(n1 + n2, 1000, "{n1} + {n2}\n{}", logs());
    assert!((50..=150).contains(&n2), "web-v2 got {n2} of 1000");
    // A header pins v2; HTTP/2 prior knowledge works too (and goes on as HTTP/1.1, the
    // backends' appProtocol).
    let pinned = body("-H 'x-version: v2'", &format!("http://{vip}/?n=[1-20]"));
    assert_eq!(pinned.matches("hello from web-v2").count(), 20, "{pinned}");
    let h2 = body(
        "--http2-prior-knowledge -H 'x-version: v2'",
        &format!("http://{vip}/"),
    );
    assert_eq!(h2, "hello from web-v2\n", "{}", logs());
    assert_eq!(
        t.curl_status(
            "client",
            &format!("http://{vip}/"),
            "--http2-prior-knowledge"
        ),
        "200"
    );
    // L7 policy: DELETE is refused by the waypoint, and never reaches a server.
    assert_eq!(
        t.curl_status("client", &format!("http://{vip}/gone"), "-X DELETE"),
        "403"
    );
    for pod in ["web-v1", "web-v2"] {
        let seen = read(dir.path().join(format!("{pod}.log")));
        assert!(!seen.contains("DELETE"), "{pod} saw a DELETE:\n{seen}");
    }
    // The waypoint reports the requests with the client's identity.
    let metrics = t
        .exec("waypoint", "curl -s http://127.0.0.1:15021/metrics")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap();
    let total = weft_tests::metric_sum(
        &metrics,
        "weft_requests_total",
        &[
            "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
            "response_code=\"200\"",
        ],
    );
    assert!(total >= 1021.0, "{total}\n{metrics}");

    // Fail closed: with the waypoint gone the bound service is refused; no server sees it.
    drop(waypoint);
    let before: Vec<usize> = ["web-v1", "web-v2"]
        .iter()
        .map(|p| read(dir.path().join(format!("{p}.log"))).lines().count())
        .collect();
    let status = t.curl_status("client", &format!("http://{vip}/after"), "");
    assert_ne!(status, "200", "{}", logs());
    std::thread::sleep(Duration::from_millis(200));
    for (pod, n) in ["web-v1", "web-v2"].iter().zip(before) {
        let seen = read(dir.path().join(format!("{pod}.log")));
        assert_eq!(
            seen.lines().count(),
            n,
            "{pod} was reached without the waypoint:\n{seen}"
        );
    }
}
