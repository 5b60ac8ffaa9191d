//! The waypoint on the real data path: network namespaces as nodes and pods, eBPF capture in
//! both weftd, an unmodified `curl` in an enrolled pod on node1 calling a service bound to a
//! waypoint that runs as a pod (never captured, `mode: none`) on node2, in front of two
//! versions of a python HTTP server on node2; and every match kind, filter and gRPC (tonic
//! client and server, `weft-test-app`) on the same path. Needs root; see
//! `weft_tests::require_root`.

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

/// Every match kind and filter, and gRPC from a real tonic client to a real tonic server, on
/// the captured path: clients in an enrolled pod on node1, `weft-test-app` (which answers with
/// the request it saw) as two versions and a mirror target on node2, the waypoint a pod there.
#[test]
fn every_match_filter_and_grpc_through_the_captured_waypoint_path() {
    if !require_root("every_match_filter_and_grpc_through_the_captured_waypoint_path") {
        return;
    }
    let id = 64;
    let app = env!("CARGO_BIN_EXE_weft-test-app");
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    t.node("node2").unwrap();
    t.link_nodes("node1", 1, "node2", 2).unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let v1 = t.pod("node2", "web-v1", 2, 2).unwrap();
    let v2 = t.pod("node2", "web-v2", 2, 3).unwrap();
    let wp_ip = t.pod("node2", "waypoint", 2, 4).unwrap();
    let shadow = t.pod("node2", "shadow", 2, 5).unwrap();
    let cgroup2 = t.extra_cgroup("node2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vip = format!("10.{id}.100.1");
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    let app_pod = |pod: &str, ip: &str, labels: &str| {
        format!(
            "  - {{name: {pod}, serviceAccount: {pod}, ips: [{ip}], node: node2, netns: \"{}\", labels: {{{labels}}}}}\n",
            t.ns_path(pod).display()
        )
    };
    let workloads = t.pod_entry("client", &client, "node1", "")
        + &app_pod("web-v1", &v1, "app: web, version: v1")
        + &app_pod("web-v2", &v2, "app: web, version: v2")
        + &app_pod("shadow", &shadow, "app: shadow")
        + &t.pod_entry("waypoint", &wp_ip, "node2", ", mode: none");
    let ports =
        "[{port: 80, targetPort: 8080}, {port: 50051, targetPort: 50051, appProtocol: grpc}]";
    let say = "/weft.test.echo.Echo/Say";
    let rest = format!(
        r#"services:
  - {{name: web, vips: [{vip}], ports: {ports}, selector: {{app: web}}, waypoint: waypoint}}
  - {{name: web-v1, vips: [10.{id}.100.2], ports: {ports}, selector: {{version: v1}}}}
  - {{name: web-v2, vips: [10.{id}.100.3], ports: {ports}, selector: {{version: v2}}}}
  - {{name: shadow, vips: [10.{id}.100.5], ports: {ports}, selector: {{app: shadow}}}}
  - {{name: waypoint, vips: [10.{id}.100.4], ports: [{{port: 15008}}], selector: {{app: waypoint}}}}
policies:
  - {{name: no-fail, namespace: default, targetRefs: [{{kind: Service, name: web}}], action: DENY,
      rules: [{{to: [{{operation: {{paths: [/weft.test.echo.Echo/Fail]}}}}]}}]}}
routes:
  - name: web
    namespace: default
    parentRefs: [{{kind: Service, name: web, port: 80}}]
    rules:
      - matches: [{{path: {{type: Exact, value: /exact}}}}]
        backendRefs: [{{name: web-v2, port: 80}}]
      - matches: [{{path: {{type: RegularExpression, value: "/re/[0-9]+"}}}}]
        backendRefs: [{{name: web-v2, port: 80}}]
      - matches: [{{headers: [{{name: x-version, value: v2}}]}}, {{queryParams: [{{name: pin, value: v2}}]}}]
        backendRefs: [{{name: web-v2, port: 80}}]
      - matches: [{{path: {{type: PathPrefix, value: /method}}, method: POST}}]
        backendRefs: [{{name: web-v2, port: 80}}]
      - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
        filters: [{{type: URLRewrite, urlRewrite: {{hostname: rewritten.example, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}}}}}]
        backendRefs: [{{name: web-v1, port: 80}}]
      - matches: [{{path: {{type: PathPrefix, value: /modify}}}}]
        filters:
          - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-added, value: "yes"}}], remove: [x-drop]}}}}
          - {{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-resp, value: "yes"}}]}}}}
        backendRefs: [{{name: web-v1, port: 80}}]
      - matches: [{{path: {{type: PathPrefix, value: /moved}}}}]
        filters: [{{type: RequestRedirect, requestRedirect: {{hostname: elsewhere.example, statusCode: 301}}}}]
      - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]
        filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow, port: 80}}}}}}]
        backendRefs: [{{name: web-v1, port: 80}}]
      - backendRefs: [{{name: web-v1, port: 80}}]
  - name: web-grpc
    namespace: default
    kind: GRPCRoute
    parentRefs: [{{kind: Service, name: web, port: 50051}}]
    rules:
      - matches: [{{path: {{type: Exact, value: {say}}}}}]
        backendRefs: [{{name: web-v2, port: 50051}}]
      - backendRefs: [{{name: web-v1, port: 50051}}]
"#
    );
    write_mesh(dir.path(), &nodes, &workloads, &rest).unwrap();
    let serve = |pod: &str, ip: &str| {
        let out = dir.path().join(format!("{pod}.out"));
        let server = weft_tests::netns::Killed(
            t.exec(pod, &format!("exec {app} serve {pod} {ip}:8080 {ip}:50051"))
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(dir.path().join(format!("{pod}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
        let started = std::time::Instant::now();
        while !read(&out).contains("\"ready\"") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{pod} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    };
    let _v1 = serve("web-v1", &v1);
    let _v2 = serve("web-v2", &v2);
    let _shadow = serve("shadow", &shadow);
    let _weftd1 = t.start_weftd(dir.path(), "node1", "").unwrap();
    let _weftd2 = t.start_weftd(dir.path(), "node2", "").unwrap();
    let wp_log = dir.path().join("waypoint.log");
    let _waypoint = t
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
    // What the server saw, from the body it answers with; and the response's headers.
    let call = |extra: &str, path: &str| -> (serde_json::Value, String) {
        let out = t
            .pod_exec(
                "client",
                &format!("curl -s -D /dev/stderr --max-time 30 {extra} 'http://{vip}{path}'"),
            )
            .unwrap();
        let headers = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
        let body = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{path}: {e}: {}\n{headers}\n{}",
                String::from_utf8_lossy(&out.stdout),
                logs()
            )
        });
        (body, headers)
    };
    let server = |extra: &str, path: &str| {
        call(extra, path).0["server"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    // Each match kind, on HTTP/1.1 and h2 prior knowledge.
    for h2 in ["", "--http2-prior-knowledge"] {
        assert_eq!(server(h2, "/exact"), "web-v2", "{h2}");
        assert_eq!(server(h2, "/exact/not"), "web-v1", "{h2}");
        assert_eq!(server(h2, "/re/123"), "web-v2", "{h2}");
        assert_eq!(server(h2, "/re/abc"), "web-v1", "{h2}");
        assert_eq!(
            server(&format!("{h2} -H 'x-version: v2'"), "/any"),
            "web-v2"
        );
        assert_eq!(server(h2, "/any?pin=v2"), "web-v2", "{h2}");
        assert_eq!(server(&format!("{h2} -X POST -d x"), "/method"), "web-v2");
        assert_eq!(server(h2, "/method"), "web-v1", "{h2}");
    }
    // Filters, as the server sees them.
    let (seen, _) = call("", "/old/page?q=1");
    assert_eq!(seen["path"], "/new/page?q=1", "{seen}");
    assert_eq!(seen["headers"]["host"], "rewritten.example", "{seen}");
    let (seen, headers) = call("-H 'x-drop: secret' -H 'x-added: no'", "/modify");
    assert_eq!(seen["headers"]["x-added"], "yes", "{seen}");
    assert!(seen["headers"].get("x-drop").is_none(), "{seen}");
    assert!(headers.contains("x-resp: yes"), "{headers}");
    assert_eq!(
        t.curl_status("client", &format!("http://{vip}/moved/here"), ""),
        "301"
    );
    let out = t
        .pod_exec(
            "client",
            &format!("curl -s -o /dev/null -w '%{{redirect_url}}' http://{vip}/moved/here"),
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "http://elsewhere.example/moved/here"
    );
    // The mirror gets a copy; the client's answer is the real backend's.
    assert_eq!(server("", "/mirror/one"), "web-v1");
    let mirrored = || read(dir.path().join("shadow.out")).contains("\"path\":\"/mirror/one\"");
    let started = std::time::Instant::now();
    while !mirrored() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the mirror never saw the request:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // gRPC from tonic: method routing, server streaming with its trailers, and the policy's
    // PERMISSION_DENIED (7) for the denied method while the others still work.
    let out = t
        .pod_exec(
            "client",
            &format!("{app} grpc {vip}:50051 web.default.svc.cluster.local:50051 say:hi count:100 fail:5 say:again"),
        )
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "{lines:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    assert_eq!(
        (lines[0]["code"].as_i64(), lines[0]["server"].as_str()),
        (Some(0), Some("web-v2"))
    );
    assert!(
        lines[0]["headers"]["x-request-id"].is_string(),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["code"], 0, "{}", lines[1]);
    assert_eq!(lines[1]["servers"], serde_json::json!(["web-v1"]));
    assert_eq!(lines[1]["indices"].as_array().map(Vec::len), Some(100));
    assert_eq!(lines[2]["code"], 7, "{}", lines[2]);
    assert_eq!(lines[3]["server"], "web-v2", "{}", lines[3]);
    // The servers count their calls: Say and Count arrived, the denied Fail never did.
    std::thread::sleep(Duration::from_millis(100));
    let v1_out = read(dir.path().join("web-v1.out"));
    let v2_out = read(dir.path().join("web-v2.out"));
    assert!(v1_out.contains(r#""Count":1"#), "{v1_out}");
    assert!(v2_out.contains(r#""Say":2"#), "{v2_out}");
    for seen in [&v1_out, &v2_out] {
        assert!(
            !seen.contains(r#""Fail":1"#),
            "reached by the denied method:\n{seen}"
        );
    }
}
