//! Capture at a realistic size: 50 enrolled pods on two nodes, 1 000 connections among them
//! from unmodified curl, each counted by both weftd with the caller's and the callee's
//! identity. Root, network namespaces, real weftd; see `capture.rs`.

use weft_tests::metric_sum;
use weft_tests::netns::{Topology, read, write_mesh};
use weft_tests::require_root;

const PODS: usize = 50;
/// Connections each pod opens, each to a different pod.
const PER_POD: usize = 20;

fn principal(i: usize) -> String {
    format!("spiffe://cluster.local/ns/default/sa/p{i}\"")
}

#[test]
fn fifty_enrolled_pods_make_a_thousand_connections_with_the_right_identities() {
    if !require_root("fifty_enrolled_pods_make_a_thousand_connections_with_the_right_identities") {
        return;
    }
    let mut t = Topology::new(51).unwrap();
    t.node("node1").unwrap();
    t.node("node2").unwrap();
    t.link_nodes("node1", 1, "node2", 2).unwrap();
    let cgroup2 = t.extra_cgroup("node2").unwrap();
    let node_of = |i: usize| if i < PODS / 2 { 1u8 } else { 2u8 };
    let mut ips = Vec::new();
    let mut workloads = String::new();
    for i in 0..PODS {
        let net = node_of(i);
        let host = 2 + (i % (PODS / 2)) as u8;
        let ip = t
            .pod(&format!("node{net}"), &format!("p{i}"), net, host)
            .unwrap();
        workloads += &t.pod_entry(&format!("p{i}"), &ip, &format!("node{net}"), "");
        ips.push(ip);
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    write_mesh(dir.path(), &nodes, &workloads, "").unwrap();
    let _servers: Vec<_> = (0..PODS)
        .map(|i| {
            t.http_server(dir.path(), &format!("p{i}"), &ips[i])
                .unwrap()
        })
        .collect();
    let _weftd1 = t.start_weftd(dir.path(), "node1", "").unwrap();
    let _weftd2 = t.start_weftd(dir.path(), "node2", "").unwrap();
    for node in ["node1", "node2"] {
        let m = t.metrics(node);
        assert!(
            m.contains(&format!("weft_capture_enrolled_workloads {}", PODS / 2)),
            "{node}:\n{m}\n{}",
            read(dir.path().join(format!("{node}.log")))
        );
    }

    // Pod i calls pods i+1 ..= i+20 (mod 50): 20 distinct peers each, same node and across.
    let target = |i: usize, k: usize| (i + 1 + k) % PODS;
    let statuses: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let urls: Vec<String> = (0..PER_POD)
                    .map(|k| format!("http://{}:8080/", ips[target(i, k)]))
                    .collect();
                let t = &t;
                s.spawn(move || {
                    let cmd = format!(
                        "sh -c 'for u in {}; do curl -s -o /dev/null -w \"%{{http_code}}\\n\" --max-time 10 $u; done'",
                        urls.join(" ")
                    );
                    t.pod_exec(&format!("p{i}"), &cmd)
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let ok: usize = statuses
        .iter()
        .map(|s| s.lines().filter(|l| *l == "200").count())
        .sum();
    assert_eq!(
        ok,
        PODS * PER_POD,
        "not every request was answered: {statuses:?}"
    );

    let metrics = [t.metrics("node1"), t.metrics("node2")];
    let opened = |node: usize, labels: &[&str]| {
        metric_sum(&metrics[node], "weft_tcp_connections_opened_total", labels)
    };
    let mtls = "connection_security_policy=\"mutual_tls\"";
    let mut wrong = Vec::new();
    for i in 0..PODS {
        for k in 0..PER_POD {
            let j = target(i, k);
            let (src, dst) = (
                format!("source_principal=\"{}", principal(i)),
                format!("destination_principal=\"{}", principal(j)),
            );
            let source = opened(
                usize::from(node_of(i) - 1),
                &["reporter=\"source\"", &src, &dst, mtls],
            );
            let destination = opened(
                usize::from(node_of(j) - 1),
                &["reporter=\"destination\"", &src, &dst, mtls],
            );
            if (source, destination) != (1.0, 1.0) {
                wrong.push(format!(
                    "p{i} -> p{j}: source {source}, destination {destination}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} pairs counted wrong: {wrong:?}",
        wrong.len()
    );
    // Nothing else was counted: every connection is one of the pairs above.
    let total: f64 = (0..2).map(|n| opened(n, &["reporter=\"source\""])).sum();
    assert_eq!(total, (PODS * PER_POD) as f64);
}
