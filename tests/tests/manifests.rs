//! The manifests source end to end: weftd reads a directory of the Kubernetes objects a user
//! would `kubectl apply` (Namespace, Pod, Service, EndpointSlice), and the namespace label
//! `weft.dev/mode=ambient` decides capture, with real eBPF capture, real curl and a packet
//! capture of the link between the nodes. Needs root; see `weft_tests::require_root`.

use std::path::Path;
use std::time::Duration;

use weft_tests::netns::{Topology, contains, opened, read, wait_for, write_ca};
use weft_tests::require_root;

const CLIENT: &str = "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"";
const SERVER: &str = "destination_principal=\"spiffe://cluster.local/ns/shop/sa/server\"";
const MTLS: &str = "connection_security_policy=\"mutual_tls\"";

fn namespace(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n")
}

fn pod(t: &Topology, ns: &str, name: &str, node: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  uid: 6f1d2c3b-0000-4000-8000-{name:0>12}
  labels: {{app: {name}{labels}}}
  annotations: {{weft.dev/netns: \"{netns}\"}}
spec:
  nodeName: {node}
  serviceAccountName: {name}
  containers: [{{name: app, image: python, ports: [{{name: http, containerPort: 8080}}]}}]
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
",
        netns = t.ns_path(name).display(),
        ip = t.pod_ip(name),
    )
}

/// Writes `<dir>/manifests/<file>` atomically (a rename, as a ConfigMap update does).
fn apply(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// Labelling a namespace enrols its running pods: their next connections go through weftd as
/// mutual TLS between the pods' service-account identities, and a marker in the request never
/// crosses the link in clear; a pod with the opt-out label stays direct; a bad manifest is
/// refused with its file and field while the last good state keeps serving; removing the label
/// unenrols the pods again.
#[test]
fn namespace_label_enrols_and_unenrols_pods_from_manifests() {
    if !require_root("namespace_label_enrols_and_unenrols_pods_from_manifests") {
        return;
    }
    let id = 53;
    let mut t = Topology::new(id).unwrap();
    t.node("node1").unwrap();
    t.node("node2").unwrap();
    let (node1_ip, _) = t.link_nodes("node1", 1, "node2", 2).unwrap();
    let client = t.pod("node1", "client", 1, 2).unwrap();
    let optout = t.pod("node1", "optout", 1, 3).unwrap();
    let server = t.pod("node2", "server", 2, 2).unwrap();
    let ext = t.pod("node2", "ext", 2, 3).unwrap();
    let cgroup2 = t.extra_cgroup("node2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_ca(dir.path()).unwrap();
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!("ca: {{certFile: root-cert.pem, keyFile: root-key.pem}}\nnodes:\n{nodes}"),
    )
    .unwrap();
    let m = dir.path().join("manifests");
    std::fs::create_dir(&m).unwrap();
    let vip = format!("10.{id}.100.1");
    apply(
        &m,
        "00-namespaces.yaml",
        &(namespace("shop", "") + "---\n" + &namespace("legacy", "")),
    );
    apply(
        &m,
        "pods.yaml",
        &[
            pod(&t, "shop", "client", "node1", ""),
            pod(&t, "shop", "optout", "node1", ", weft.dev/mode: none"),
            pod(&t, "shop", "server", "node2", ""),
            pod(&t, "legacy", "ext", "node2", ""),
        ]
        .join("---\n"),
    );
    apply(
        &m,
        "service.yaml",
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: server, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: server}}
  ports: [{{name: web, port: 80, targetPort: http}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: server-x7k2p
  namespace: shop
  labels: {{kubernetes.io/service-name: server}}
addressType: IPv4
ports: [{{name: web, port: 8080, protocol: TCP}}]
endpoints:
  - addresses: [{server}]
    conditions: {{ready: true}}
    targetRef: {{kind: Pod, namespace: shop, name: server}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: server, namespace: shop}}
spec: {{}}
"
        ),
    );
    let _server = t.http_server(dir.path(), "server", &server).unwrap();
    let _ext = t.http_server(dir.path(), "ext", &ext).unwrap();
    let extra = format!("--manifests {} --reload-interval 100ms", m.display());
    let _weftd1 = t.start_weftd(dir.path(), "node1", &extra).unwrap();
    let _weftd2 = t.start_weftd(dir.path(), "node2", &extra).unwrap();
    let logs = |node: &str| read(dir.path().join(format!("{node}.log")));
    let ext_log = || read(dir.path().join("ext.log"));
    let ext_url = format!("http://{ext}:8080/");

    // Not labelled yet: nothing is captured.
    assert_eq!(t.curl_status("client", &ext_url, ""), "200");
    assert!(
        ext_log().contains(&format!("{client} - -")),
        "{}",
        ext_log()
    );
    assert!(
        !logs("node1").contains("enrolled for capture"),
        "{}",
        logs("node1")
    );

    // Label the namespace.
    apply(
        &m,
        "00-namespaces.yaml",
        &(namespace("shop", "weft.dev/mode: ambient") + "---\n" + &namespace("legacy", "")),
    );
    for node in ["node1", "node2"] {
        assert!(
            wait_for(|| logs(node).contains("enrolled for capture")),
            "{node}:\n{}",
            logs(node)
        );
    }
    let dump = t.capture_uplink(dir.path(), "node1").unwrap();
    let mesh_marker = "SECRET-FROM-A-LABELLED-NAMESPACE-5d1e";
    let optout_marker = "VISIBLE-FROM-THE-OPTED-OUT-POD-a07b";
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
        "optout",
        &ext_url,
        &format!("-H 'x-marker: {optout_marker}'"),
    );
    assert_eq!(status, "200");
    let captured = dump.finish(Duration::from_millis(500));
    assert!(
        contains(&captured, optout_marker),
        "the opted-out pod's request was not seen in clear on the link ({} bytes)",
        captured.len()
    );
    assert!(
        !contains(&captured, mesh_marker),
        "the labelled namespace's request crossed the link in clear text"
    );
    assert!(
        ext_log().contains(&format!("{optout} - -")),
        "the opted-out pod did not go direct:\n{}",
        ext_log()
    );
    for (node, reporter) in [
        ("node1", "reporter=\"source\""),
        ("node2", "reporter=\"destination\""),
    ] {
        let metrics = t.metrics(node);
        assert!(
            opened(&metrics, &[reporter, CLIENT, SERVER, MTLS]),
            "{node}:\n{metrics}"
        );
    }
    // The enrolled client's call outside the mesh now leaves through node1's weftd.
    assert_eq!(t.curl_status("client", &ext_url, ""), "200");
    assert!(
        ext_log().contains(&format!("{node1_ip} - -")),
        "{}",
        ext_log()
    );

    // A bad manifest: refused with its file, document and field; the mesh keeps working.
    apply(
        &m,
        "pods.yaml",
        &read(m.join("pods.yaml")).replacen("containerPort: 8080", "containerPort: eighty", 1),
    );
    assert!(
        wait_for(|| logs("node1").contains("keeping the last good mesh state")),
        "{}",
        logs("node1")
    );
    let dump: serde_json::Value =
        serde_json::from_str(&t.node_get("node1", "http://127.0.0.1:15000/config_dump")).unwrap();
    assert_eq!(dump["config"]["source"], "manifests", "{dump}");
    assert_eq!(dump["config"]["synced"], false, "{dump}");
    let error = dump["config"]["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("pods.yaml document 1")
            && error.contains("spec.containers[0].ports[0].containerPort"),
        "{error}"
    );
    assert_eq!(
        t.curl_status("client", &format!("http://{vip}/"), ""),
        "200"
    );

    // Remove the label (and fix the pod): the pods leave the mesh.
    apply(
        &m,
        "pods.yaml",
        &read(m.join("pods.yaml")).replace("containerPort: eighty", "containerPort: 8080"),
    );
    apply(
        &m,
        "00-namespaces.yaml",
        &(namespace("shop", "") + "---\n" + &namespace("legacy", "")),
    );
    assert!(
        wait_for(|| logs("node1").contains("unenrolled from capture")),
        "{}",
        logs("node1")
    );
    let before = ext_log().matches(&format!("{client} - -")).count();
    assert_eq!(t.curl_status("client", &ext_url, ""), "200");
    assert_eq!(
        ext_log().matches(&format!("{client} - -")).count(),
        before + 1,
        "the unenrolled pod's connection was still captured:\n{}",
        ext_log()
    );
}
