//! Kubernetes mode end to end, as processes: weft-controller and two `weftd run --kubernetes`
//! against a fake API server over real HTTP (the only fake: the HTTP boundary under
//! `kube::Client`). Workloads are real TCP servers and clients on loopback, using the explicit
//! (PROXY header) capture seam, so this needs no root.

use std::time::Duration;

use serde_json::{Value, json};
use weft_tests::cluster::{Controller, FakeCluster};
use weft_tests::{
    Mesh, Weftd, connect_via, echo_addr, echo_vip, eventually, http, ip, metric_sum, round_trip,
    traffic,
};

const ID: u8 = 54;

fn pod(
    ns: &str,
    name: &str,
    sa: &str,
    node: &str,
    ip: std::net::IpAddr,
    host_network: bool,
) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": {"app": name}},
           "spec": {"nodeName": node, "serviceAccountName": sa, "hostNetwork": host_network,
                    "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}})
}

/// The cluster: namespace `default` labelled ambient with `sleep` on node1 and `echo` on node2
/// behind Service `echo`; weftd's own pods in `weft`; TokenReview answers for their tokens.
fn populate(api: &weft_tests::cluster::FakeApi) {
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "default", "labels": {"weft.dev/mode": "ambient"}}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft"}}));
    api.apply(pod(
        "default",
        "sleep",
        "sleep",
        "node1",
        ip(ID, 1, 1),
        false,
    ));
    // echo is a Deployment's pod (`echo-v1`, through its ReplicaSet): metrics name the
    // Deployment, not the pod.
    let mut echo = pod("default", "echo", "echo", "node2", ip(ID, 2, 1), false);
    echo["metadata"]["labels"]["pod-template-hash"] = json!("5d8f7c9b6");
    echo["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "echo-v1-5d8f7c9b6", "uid": "uid-rs", "controller": true}]);
    api.apply(echo);
    for n in [1, 2] {
        api.apply(pod(
            "weft",
            &format!("weftd-node{n}"),
            "weftd",
            &format!("node{n}"),
            ip(ID, n, 250),
            true,
        ));
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"namespace": "default", "name": "echo"},
                     "spec": {"clusterIP": echo_vip(ID).ip().to_string(), "selector": {"app": "echo"},
                              "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}}));
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"namespace": "default", "name": "echo-abc12",
                                  "labels": {"kubernetes.io/service-name": "echo"}},
                     "addressType": "IPv4",
                     "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
                     "endpoints": [{"addresses": [ip(ID, 2, 1).to_string()], "conditions": {"ready": true},
                                    "targetRef": {"kind": "Pod", "namespace": "default", "name": "echo"}}]}));
    api.set_handler(Box::new(|method, path, body| {
        if method != http::Method::POST || !path.ends_with("/tokenreviews") {
            return None;
        }
        let review: Value = serde_json::from_slice(body).unwrap_or_default();
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let status = match token.strip_prefix("token-") {
            Some(node @ ("node1" | "node2")) => json!({
                "authenticated": true, "audiences": ["weft-ca"],
                "user": {"username": "system:serviceaccount:weft:weftd",
                         "extra": {"authentication.kubernetes.io/pod-name": [format!("weftd-{node}")],
                                   "authentication.kubernetes.io/pod-uid": [format!("uid-weftd-{node}")]}}}),
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        Some((http::StatusCode::CREATED,
              json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                     "metadata": {}, "status": status})))
    }));
}

/// The mesh file in Kubernetes mode: settings only (trust domain, the nodes' listeners).
fn settings(m: &Mesh) {
    let mut v = m.to_value();
    let o = v.as_object_mut().unwrap();
    for key in ["ca", "workloads", "services", "policies"] {
        o.remove(key);
    }
    m.write_text(&serde_yaml_ng::to_string(&v).unwrap())
        .unwrap();
}

fn start_weftd(m: &Mesh, n: u8, cluster: &FakeCluster, controller: &Controller) -> Weftd {
    let token = m.dir.path().join(format!("token-node{n}"));
    std::fs::write(&token, format!("token-node{n}\n")).unwrap();
    let args = [
        "--kubernetes".to_owned(),
        "--ca-address".to_owned(),
        format!("https://{}", controller.grpc),
        "--ca-token".to_owned(),
        token.display().to_string(),
    ];
    m.start_with(n, &args, &[("KUBECONFIG", cluster.kubeconfig.as_path())])
        .unwrap_or_else(|e| panic!("weftd node{n}: {e:#}\ncontroller:\n{}", controller.logs()))
}

fn identities(w: &Weftd) -> Vec<(String, String)> {
    let dump = w.config_dump().unwrap();
    dump["certificates"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["identity"].as_str().unwrap_or("").to_owned(),
                        c["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// weftd gets every workload certificate from weft-controller (the CA's key never on the
/// node, the node's key never leaving it), only for the pods on its own node, and the tunnel
/// between the nodes is mutual TLS between the pods' service accounts. With the API server
/// gone, both nodes keep serving the last good state and say so.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_get_their_pods_identities_from_the_controller_and_carry_mutual_tls() {
    let m = Mesh::new(ID, 2).unwrap();
    let cluster = FakeCluster::start(ip(ID, 0, 200), m.dir.path()).unwrap();
    populate(&cluster.api);
    let controller = Controller::start(ip(ID, 0, 201), &cluster, m.dir.path()).unwrap();
    let root = cluster
        .api
        .get("ConfigMap", "weft/weft-ca-root")
        .expect("root published");
    assert!(
        root["data"]["root-cert.pem"]
            .as_str()
            .unwrap_or("")
            .contains("BEGIN CERTIFICATE")
    );
    settings(&m);
    let n1 = start_weftd(&m, 1, &cluster, &controller);
    let n2 = start_weftd(&m, 2, &cluster, &controller);

    let sleep = "spiffe://cluster.local/ns/default/sa/sleep".to_owned();
    let echo = "spiffe://cluster.local/ns/default/sa/echo".to_owned();
    assert_eq!(
        identities(&n1),
        vec![(sleep.clone(), "valid".to_owned())],
        "{}",
        n1.logs()
    );
    assert_eq!(
        identities(&n2),
        vec![(echo.clone(), "valid".to_owned())],
        "{}",
        n2.logs()
    );
    let cm = controller.metrics();
    assert_eq!(
        metric_sum(
            &cm,
            "weft_certificate_requests_total",
            &["result=\"issued\""]
        ),
        2.0,
        "{cm}"
    );
    assert_eq!(
        metric_sum(
            &cm,
            "weft_certificate_requests_total",
            &["result=\"refused\""]
        ),
        0.0,
        "{cm}"
    );

    let _echo = traffic::echo_server(echo_addr(ID)).await.unwrap();
    let mut c = connect_via(&n1.addrs, ip(ID, 1, 1), echo_vip(ID))
        .await
        .unwrap();
    round_trip(&mut c, b"through the controller's certificates")
        .await
        .unwrap_or_else(|e| panic!("{e}\nnode1:\n{}\nnode2:\n{}", n1.logs(), n2.logs()));
    drop(c);
    let labels = [
        "reporter=\"destination\"",
        "connection_security_policy=\"mutual_tls\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
        "source_workload=\"sleep\"",
        "destination_workload=\"echo-v1\"",
    ];
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &n2.metrics(),
            "weft_tcp_connections_opened_total",
            &labels
        ) >= 1.0)
        .await,
        "{}",
        n2.metrics()
    );

    // The API server gone: the last good state keeps serving, readiness says what is stale.
    cluster.api.set_down(true);
    let mut c = connect_via(&n1.addrs, ip(ID, 1, 1), echo_vip(ID))
        .await
        .unwrap();
    round_trip(&mut c, b"with the API server down")
        .await
        .unwrap();
    let stale = |w: &Weftd| {
        http(w.addrs.readiness, "GET", "/healthz/ready")
            .map(|(code, body)| code == 200 && body.contains("stale"))
            .unwrap_or(false)
    };
    assert!(
        eventually(Duration::from_secs(20), || stale(&n1)).await,
        "{:?}",
        http(n1.addrs.readiness, "GET", "/healthz/ready")
    );
    cluster.api.set_down(false);
}
