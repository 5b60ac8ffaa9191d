//! A waypoint in Kubernetes mode, end to end, as processes against the fake API server:
//! weft-controller turns a `Gateway` of class `weft-waypoint` into the waypoint's objects and
//! grants its account the mesh's read view; `weft-waypoint --kubernetes` gets its certificate
//! from the controller and its routes from the API server; two `weftd --kubernetes` steer the
//! bound Service through it. Real HTTP on loopback (the explicit capture seam): no root.
//! Every request each component made is then checked against what the chart's RBAC grants it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use weft_core::discovery::cluster::fake::Grants;
use weft_tests::cluster::{Controller, FakeCluster};
use weft_tests::http_app::http_app;
use weft_tests::{Mesh, Weftd, connect_via, eventually, ip, waypoint_addrs};

const ID: u8 = 65;
const MANIFESTS: &str = include_str!("../../deploy/manifests/weft.yaml");

fn pod(name: &str, sa: &str, node: &str, addr: std::net::IpAddr, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}"), "labels": labels},
           "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running", "podIP": addr.to_string(), "podIPs": [{"ip": addr.to_string()}]}})
}

fn service(name: &str, host: u8, selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": "default", "name": name},
           "spec": {"clusterIP": ip(ID, 0, host).to_string(), "selector": selector,
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}})
}

/// `default` is ambient and bound to waypoint `waypoint`: `sleep` on node1, `web-v1`/`web-v2`
/// on node2 behind `web` and their own Services, a route splitting by header, the Gateway.
fn populate(api: &weft_tests::cluster::FakeApi) {
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "default", "labels": {"weft.dev/mode": "ambient",
                                                                "weft.dev/use-waypoint": "waypoint"}}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft"}}));
    api.apply(pod(
        "sleep",
        "sleep",
        "node1",
        ip(ID, 1, 1),
        json!({"app": "sleep"}),
    ));
    for (n, v) in [(1, "v1"), (2, "v2")] {
        let name = format!("web-{v}");
        api.apply(pod(
            &name,
            &name,
            "node2",
            ip(ID, 2, n),
            json!({"app": "web", "version": v}),
        ));
    }
    for n in [1, 2] {
        let mut p = pod(
            &format!("weftd-node{n}"),
            "weftd",
            &format!("node{n}"),
            ip(ID, n, 250),
            json!({}),
        );
        p["metadata"]["namespace"] = json!("weft");
        p["spec"]["hostNetwork"] = json!(true);
        api.apply(p);
    }
    api.apply(service("web", 100, json!({"app": "web"})));
    api.apply(service("web-v1", 101, json!({"version": "v1"})));
    api.apply(service("web-v2", 102, json!({"version": "v2"})));
    api.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "default", "name": "web", "generation": 1},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [
                    {"matches": [{"headers": [{"name": "x-version", "value": "v2"}]}],
                     "backendRefs": [{"name": "web-v2", "port": 80}]},
                    {"backendRefs": [{"name": "web-v1", "port": 80}]}]}}),
    );
    api.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"namespace": "default", "name": "waypoint", "uid": "uid-gateway", "generation": 1},
        "spec": {"gatewayClassName": "weft-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}));
    // The kubelet's tokens: weftd's (node agents) and the waypoint pod's own.
    api.set_handler(Box::new(|method, path, body| {
        if method != http::Method::POST || !path.ends_with("/tokenreviews") {
            return None;
        }
        let review: Value = serde_json::from_slice(body).unwrap_or_default();
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let user = |account: &str, pod: &str| {
            json!({"authenticated": true, "audiences": ["weft-ca"],
                   "user": {"username": format!("system:serviceaccount:{account}"),
                            "extra": {"authentication.kubernetes.io/pod-name": [pod],
                                      "authentication.kubernetes.io/pod-uid": [format!("uid-{pod}")]}}})
        };
        let status = match token {
            "token-node1" => user("weft:weftd", "weftd-node1"),
            "token-node2" => user("weft:weftd", "weftd-node2"),
            "token-waypoint" => user("default:waypoint", "waypoint-0"),
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        Some((http::StatusCode::CREATED,
              json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                     "metadata": {}, "status": status})))
    }));
}

/// What the API server and the kubelet would do with the controller's objects: the Service
/// gets its cluster IP, the Deployment's pod runs on node3 and becomes available.
fn run_the_deployment(api: &weft_tests::cluster::FakeApi) {
    let d = api
        .get("Deployment", "default/waypoint")
        .expect("the Deployment");
    let labels = d["spec"]["template"]["metadata"]["labels"].clone();
    assert_eq!(labels["weft.dev/mode"], "none", "{labels}");
    let (hbone, _, _) = waypoint_addrs(ID);
    api.apply(pod("waypoint-0", "waypoint", "node3", hbone.ip(), labels));
    let mut s = api.get("Service", "default/waypoint").expect("the Service");
    s["spec"]["clusterIP"] = json!(ip(ID, 0, 110).to_string());
    api.apply(s);
    let mut d = d;
    d["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    api.apply(d);
}

fn condition(object: &Value, path: &[&str], type_: &str) -> Option<(String, String, String)> {
    let conditions = path.iter().fold(object, |v, k| &v[*k]);
    let c = conditions.as_array()?.iter().find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((s("status"), s("reason"), s("message")))
}

async fn get(n1: &Weftd, header: Option<&str>) -> anyhow::Result<Value> {
    let tcp = connect_via(&n1.addrs, ip(ID, 1, 1), SocketAddr::new(ip(ID, 0, 100), 80)).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::get("/hello").header("host", "web.default.svc.cluster.local");
    if let Some(v) = header {
        req = req.header("x-version", v);
    }
    let resp = send
        .send_request(req.body(Full::<Bytes>::default())?)
        .await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waypoint_gateway_in_kubernetes_mode_routes_the_bound_service() {
    let mut m = Mesh::new(ID, 2).unwrap();
    m.nodes.push("node3".into());
    let cluster = FakeCluster::start(ip(ID, 0, 200), m.dir.path()).unwrap();
    populate(&cluster.api);
    let controller = Controller::start(ip(ID, 0, 201), &cluster, m.dir.path()).unwrap();
    // Settings only: the mesh comes from the API server, certificates from the controller.
    let mut v = m.to_value();
    for key in ["ca", "workloads", "services", "policies", "routes"] {
        v.as_object_mut().unwrap().remove(key);
    }
    m.write_text(&serde_yaml_ng::to_string(&v).unwrap())
        .unwrap();

    let api = &cluster.api;
    let made = || {
        api.get("Deployment", "default/waypoint").is_some()
            && api.get("Service", "default/waypoint").is_some()
    };
    assert!(
        eventually(Duration::from_secs(10), made).await,
        "{}",
        controller.logs()
    );
    run_the_deployment(api);
    let bound = || {
        api.get("ClusterRoleBinding", "/weft-waypoint")
            .is_some_and(|b| b["subjects"] == json!([{"kind": "ServiceAccount", "apiGroup": "", "name": "waypoint", "namespace": "default"}]))
    };
    // The chart makes the binding; the controller fills it in.
    api.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                     "metadata": {"name": "weft-waypoint"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft-waypoint"}}));
    assert!(
        eventually(Duration::from_secs(15), bound).await,
        "{}",
        controller.logs()
    );

    let ca = format!("https://{}", controller.grpc);
    let weftd_config = cluster.kubeconfig_for("weftd").unwrap();
    let start_weftd = |n: u8| {
        let token = m.dir.path().join(format!("token-node{n}"));
        std::fs::write(&token, format!("token-node{n}\n")).unwrap();
        let args = [
            "--kubernetes".to_owned(),
            "--ca-address".to_owned(),
            ca.clone(),
            "--ca-token".to_owned(),
            token.display().to_string(),
        ];
        m.start_with(n, &args, &[("KUBECONFIG", weftd_config.as_path())])
            .unwrap_or_else(|e| panic!("weftd node{n}: {e:#}\ncontroller:\n{}", controller.logs()))
    };
    let n1 = start_weftd(1);
    let n2 = start_weftd(2);
    let token = m.dir.path().join("token-waypoint");
    std::fs::write(&token, "token-waypoint\n").unwrap();
    let waypoint_config = cluster.kubeconfig_for("waypoint").unwrap();
    let wp = m
        .start_waypoint_with(
            &[
                "--kubernetes".to_owned(),
                "--ca-address".to_owned(),
                ca.clone(),
                "--ca-token".to_owned(),
                token.display().to_string(),
            ],
            &[("KUBECONFIG", waypoint_config.as_path())],
        )
        .unwrap_or_else(|e| panic!("waypoint: {e:#}\ncontroller:\n{}", controller.logs()));
    let _v1 = http_app(SocketAddr::new(ip(ID, 2, 1), 8080), "web-v1")
        .await
        .unwrap();
    let _v2 = http_app(SocketAddr::new(ip(ID, 2, 2), 8080), "web-v2")
        .await
        .unwrap();
    let logs = || {
        format!(
            "node1:\n{}\nwaypoint:\n{}\nnode2:\n{}\ncontroller:\n{}",
            n1.logs(),
            wp.logs(),
            n2.logs(),
            controller.logs()
        )
    };

    // The route, from the API server, applied by the waypoint, seen by the server.
    let seen = get(&n1, Some("v2"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(seen["server"], "web-v2", "{seen}");
    let seen = get(&n1, None)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(seen["server"], "web-v1", "{seen}");
    let dump = wp.config_dump().unwrap();
    assert!(
        dump.to_string()
            .contains("spiffe://cluster.local/ns/default/sa/waypoint"),
        "{dump}"
    );

    // What a user reads: the Gateway programmed, the route accepted by the waypoint.
    let programmed = || {
        api.get("Gateway", "default/waypoint")
            .and_then(|g| condition(&g, &["status", "conditions"], "Programmed"))
            .is_some_and(|(s, _, _)| s == "True")
    };
    assert!(
        eventually(Duration::from_secs(10), programmed).await,
        "{}",
        controller.logs()
    );
    let accepted = || {
        api.get("HTTPRoute", "default/web")
            .and_then(|r| condition(&r["status"]["parents"][0], &["conditions"], "Accepted"))
            .is_some_and(|(s, _, m)| s == "True" && m == "applied by waypoint default/waypoint")
    };
    assert!(
        eventually(Duration::from_secs(10), accepted).await,
        "{:#}\n{}",
        api.get("HTTPRoute", "default/web").unwrap_or_default(),
        controller.logs()
    );

    // Each component asked only for what the chart's RBAC grants it.
    for (token, grants, who) in [
        (
            "controller",
            Grants::bound(MANIFESTS, "weft", "weft-controller"),
            "weft-controller",
        ),
        ("weftd", Grants::bound(MANIFESTS, "weft", "weftd"), "weftd"),
        (
            "waypoint",
            Grants::cluster_role(MANIFESTS, "weft-waypoint"),
            "the waypoint",
        ),
    ] {
        let asked = api.asked_by(token);
        assert!(!asked.is_empty(), "{who} asked nothing");
        let refused = grants.refused(&asked);
        assert!(
            refused.is_empty(),
            "the chart's RBAC does not grant {who}: {refused:#?}"
        );
    }
}
