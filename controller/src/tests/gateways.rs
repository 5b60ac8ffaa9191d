//! Waypoint Gateways: what a user finds in the API after applying one.

use super::*;

const MESH: &str = "trustDomain: cluster.local\nhbonePort: 15008\n";

/// A Gateway in `shop`; `listeners` is left out when null.
fn gateway(name: &str, class: &str, replicas: Option<&str>, listeners: Value) -> Value {
    let mut g = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"gatewayClassName": class}});
    if let Some(r) = replicas {
        g["metadata"]["annotations"] = json!({"weft.dev/replicas": r});
    }
    if !listeners.is_null() {
        g["spec"]["listeners"] = listeners;
    }
    g
}

fn mesh_configmap() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"namespace": "weft", "name": "weft-mesh"}, "data": {"mesh.yaml": MESH}})
}

/// The condition `type_` of Gateway shop/`name`: (status, reason, message).
fn condition(api: &FakeApi, name: &str, type_: &str) -> Option<(String, String, String)> {
    let g = api.get("Gateway", &format!("shop/{name}"))?;
    let c = g["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((s("status"), s("reason"), s("message")))
}

fn status_of(api: &FakeApi, name: &str, type_: &str) -> Option<(String, String)> {
    condition(api, name, type_).map(|(s, r, _)| (s, r))
}

fn pair(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.to_owned(), reason.to_owned()))
}

fn owner(name: &str) -> Value {
    json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": name,
            "uid": format!("uid-{name}"), "controller": true, "blockOwnerDeletion": true}])
}

/// What the kubelet and the endpoints controller would do: a replica available, an address.
fn come_up(api: &FakeApi, name: &str) {
    let mut d = api.get("Deployment", &format!("shop/{name}")).unwrap();
    d["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    api.apply(d);
    let mut s = api.get("Service", &format!("shop/{name}")).unwrap();
    s["spec"]["clusterIP"] = json!("10.96.0.20");
    api.apply(s);
}

fn versions(api: &FakeApi, name: &str) -> Vec<Value> {
    ["Gateway", "Deployment", "Service", "ServiceAccount"]
        .iter()
        .map(|k| {
            api.get(k, &format!("shop/{name}")).unwrap()["metadata"]["resourceVersion"].clone()
        })
        .collect()
}

fn patches(api: &FakeApi) -> Vec<u64> {
    ["gateways", "deployments", "services", "serviceaccounts"]
        .iter()
        .map(|r| api.patches(r))
        .collect()
}

#[tokio::test]
async fn a_waypoint_gateway_runs_a_waypoint_and_says_when_it_is_programmed() {
    let api = cluster();
    api.apply(mesh_configmap());
    let mesh_listener = json!([{"name": "mesh", "port": 15008, "protocol": "HBONE",
                "allowedRoutes": {"namespaces": {"from": "Same"}}}]);
    api.apply(gateway("waypoint", "weft-waypoint", None, mesh_listener));
    api.apply(gateway("ingress", "other-class", None, Value::Null));
    let c = controller(api.clone(), secret_source()).await;
    let written = || status_of(&c.api, "waypoint", "Programmed").is_some();
    assert!(until(Duration::from_secs(10), written).await);

    let d = api.get("Deployment", "shop/waypoint").unwrap();
    assert_eq!(d["metadata"]["ownerReferences"], owner("waypoint"));
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/name"],
        "weft-waypoint"
    );
    assert_eq!(
        d["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    assert_eq!(d["spec"]["replicas"], 1);
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["weft.dev/mode"], "none");
    assert_eq!(pod["metadata"]["annotations"]["weft.dev/mesh"], MESH);
    assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "weft/weft-waypoint:test");
    assert_eq!(
        container["args"],
        json!([
            "--kubernetes",
            "--name",
            "waypoint",
            "--mesh",
            "/etc/weft/mesh.yaml"
        ])
    );
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env["WEFT_CA_ADDRESS"]["value"],
        "https://weft-controller.weft.svc:15012"
    );
    assert_eq!(env["WEFT_CONTROLLER_NAMESPACE"]["value"], "weft");
    assert_eq!(
        env["WEFT_WORKERS"]["value"], "2",
        "the default data-plane threads"
    );
    assert_eq!(
        env["WEFT_CA_IDENTITY"]["value"],
        "spiffe://cluster.local/ns/weft/sa/weft-controller"
    );
    assert!(
        !env.contains_key("WEFT_OTLP_ENDPOINT"),
        "tracing is off unless the controller is given a collector"
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/healthz/ready"
    );
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(
        volumes.contains("metadata.annotations['weft.dev/mesh']"),
        "{volumes}"
    );
    assert!(volumes.contains(r#""audience":"weft-ca""#), "{volumes}");

    let s = api.get("Service", "shop/waypoint").unwrap();
    assert_eq!(s["metadata"]["ownerReferences"], owner("waypoint"));
    assert_eq!(
        s["spec"]["selector"],
        json!({"app.kubernetes.io/name": "weft-waypoint",
               "gateway.networking.k8s.io/gateway-name": "waypoint"})
    );
    let ports = s["spec"]["ports"].as_array().unwrap();
    assert_eq!(
        (ports[0]["name"].as_str(), ports[0]["port"].as_i64()),
        (Some("hbone"), Some(15008))
    );
    assert!(ports[0].get("appProtocol").is_none());
    assert_eq!(
        (ports[1]["name"].as_str(), ports[1]["port"].as_i64()),
        (Some("status"), Some(15021))
    );
    let sa = api.get("ServiceAccount", "shop/waypoint").unwrap();
    assert_eq!(sa["metadata"]["ownerReferences"], owner("waypoint"));

    // Another class is someone else's: nothing made, no status written.
    assert!(api.get("Deployment", "shop/ingress").is_none());
    assert!(
        api.get("Gateway", "shop/ingress")
            .unwrap()
            .get("status")
            .is_none()
    );

    assert_eq!(
        status_of(&api, "waypoint", "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        status_of(&api, "waypoint", "Programmed"),
        pair("False", "Pending")
    );
    let before = api.get("Gateway", "shop/waypoint").unwrap()["status"].clone();
    assert!(before.get("addresses").is_none(), "{before}");

    come_up(&api, "waypoint");
    let programmed = || status_of(&c.api, "waypoint", "Programmed") == pair("True", "Programmed");
    assert!(until(Duration::from_secs(10), programmed).await);
    let status = api.get("Gateway", "shop/waypoint").unwrap()["status"].clone();
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "10.96.0.20"}])
    );
    let accepted = |s: &Value| s["conditions"][0].clone();
    assert_eq!(
        accepted(&status),
        accepted(&before),
        "Accepted did not change"
    );
    assert_eq!(status["conditions"][1]["observedGeneration"], 1);

    // A restart (a resync of everything) writes nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (seen, written) = (versions(&api, "waypoint"), patches(&api));
    let listed = api.lists("gateways");
    drop(c);
    let c = controller(api.clone(), secret_source()).await;
    assert!(until(Duration::from_secs(10), || c.api.lists("gateways") > listed).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(versions(&api, "waypoint"), seen);
    assert_eq!(patches(&api), written);

    // What someone changes in the waypoint's objects is put back.
    let mut d = api.get("Deployment", "shop/waypoint").unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("elsewhere/proxy:1");
    d["spec"]["template"]["metadata"]["labels"]["weft.dev/mode"] = json!("ambient");
    api.apply(d);
    api.delete("Service", "shop/waypoint");
    let restored = || {
        let d = c.api.get("Deployment", "shop/waypoint").unwrap();
        let pod = &d["spec"]["template"];
        pod["spec"]["containers"][0]["image"] == "weft/weft-waypoint:test"
            && pod["metadata"]["labels"]["weft.dev/mode"] == "none"
            && c.api.get("Service", "shop/waypoint").is_some()
    };
    assert!(until(Duration::from_secs(10), restored).await);
}

#[tokio::test]
async fn a_gateway_weft_cannot_honour_says_why_and_is_followed_once_fixed() {
    let api = cluster();
    let mut counted = gateway("counted", "weft-waypoint", Some("three"), Value::Null);
    counted["metadata"]["annotations"]["weft.dev/workers"] = json!("0");
    api.apply(counted);
    let http = json!([{"name": "http", "port": 80, "protocol": "HTTP"}]);
    api.apply(gateway("http", "weft-waypoint", None, http));
    let c = controller(api.clone(), secret_source()).await;
    let both = || {
        ["counted", "http"]
            .iter()
            .all(|n| status_of(&c.api, n, "Accepted").is_some())
    };
    assert!(until(Duration::from_secs(10), both).await);

    let (status, reason, message) = condition(&api, "counted", "Accepted").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidParameters")
    );
    assert!(
        message.contains("weft.dev/replicas") && message.contains("three"),
        "{message}"
    );
    assert!(
        message.contains("weft.dev/workers") && message.contains("\"0\""),
        "{message}"
    );
    let (status, reason, message) = condition(&api, "http", "Accepted").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidParameters")
    );
    assert!(
        message.contains("spec.listeners") && message.contains("http 80/HTTP"),
        "{message}"
    );
    assert_eq!(
        status_of(&api, "http", "Programmed"),
        pair("False", "Invalid")
    );
    assert!(api.get("Deployment", "shop/counted").is_none());
    assert!(api.get("Deployment", "shop/http").is_none());
    assert!(api.get("ServiceAccount", "shop/counted").is_none());

    let mut fixed = gateway("counted", "weft-waypoint", Some("2"), Value::Null);
    fixed["metadata"]["generation"] = json!(2);
    fixed["metadata"]["annotations"]["weft.dev/workers"] = json!("4");
    api.apply(fixed);
    let workers = |d: &Value| {
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == "WEFT_WORKERS"))
            .map(|e| e["value"].clone())
    };
    let running = || {
        c.api
            .get("Deployment", "shop/counted")
            .is_some_and(|d| d["spec"]["replicas"] == 2 && workers(&d) == Some(json!("4")))
            && status_of(&c.api, "counted", "Accepted") == pair("True", "Accepted")
    };
    assert!(until(Duration::from_secs(10), running).await);
    let g = api.get("Gateway", "shop/counted").unwrap();
    assert_eq!(g["status"]["conditions"][0]["observedGeneration"], 2);
}

#[tokio::test]
async fn objects_that_were_there_are_used_or_left_alone_never_taken() {
    let api = cluster();
    // A service account someone made (and may use elsewhere): the waypoint runs as it, and
    // it gets no owner reference, so deleting the Gateway cannot delete it.
    api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"namespace": "shop", "name": "waypoint"}}));
    // A Deployment of the same name as a Gateway, not the Gateway's.
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"namespace": "shop", "name": "legacy"},
                     "spec": {"selector": {"matchLabels": {"app": "legacy"}},
                              "template": {"metadata": {"labels": {"app": "legacy"}},
                                           "spec": {"containers": [{"name": "app", "image": "legacy:1"}]}}}}));
    api.apply(gateway("waypoint", "weft-waypoint", None, Value::Null));
    api.apply(gateway("legacy", "weft-waypoint", None, Value::Null));
    let c = controller(api.clone(), secret_source()).await;
    let both = || {
        ["waypoint", "legacy"]
            .iter()
            .all(|n| status_of(&c.api, n, "Programmed").is_some())
    };
    assert!(until(Duration::from_secs(10), both).await);

    assert!(api.get("Deployment", "shop/waypoint").is_some());
    let sa = api.get("ServiceAccount", "shop/waypoint").unwrap();
    assert!(sa["metadata"].get("ownerReferences").is_none(), "{sa}");
    assert_eq!(api.patches("serviceaccounts"), 0);

    let (status, reason, message) = condition(&api, "legacy", "Programmed").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.contains("Deployment shop/legacy") && message.contains("not controlled"),
        "{message}"
    );
    let legacy = api.get("Deployment", "shop/legacy").unwrap();
    assert_eq!(
        legacy["spec"]["template"]["spec"]["containers"][0]["image"],
        "legacy:1"
    );
    assert_eq!(api.patches("deployments"), 0);
}

fn bound(api: &FakeApi) -> Option<Vec<String>> {
    let b = api.get("ClusterRoleBinding", "/weft-waypoint")?;
    Some(
        b["subjects"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|s| {
                        format!(
                            "{}/{}/{}",
                            s["kind"].as_str().unwrap_or(""),
                            s["namespace"].as_str().unwrap_or(""),
                            s["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn binding() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": "weft-waypoint"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft-waypoint"}})
}

/// The accounts made for waypoint Gateways, and only those, can read the mesh; an account
/// that was there before its Gateway is not handed that view, and its Gateway says so.
#[tokio::test]
async fn waypoint_accounts_are_bound_to_the_mesh_read_view_while_their_gateway_exists() {
    let api = cluster();
    api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"namespace": "shop", "name": "default"}}));
    api.apply(gateway("default", "weft-waypoint", None, Value::Null));
    api.apply(gateway("waypoint", "weft-waypoint", None, Value::Null));
    api.apply(gateway("ingress", "other-class", None, Value::Null));
    let mut elsewhere = gateway("waypoint", "weft-waypoint", None, Value::Null);
    elsewhere["metadata"]["namespace"] = json!("store");
    elsewhere["metadata"]["uid"] = json!("uid-store-waypoint");
    api.apply(elsewhere);

    // Without the chart's binding: counted and said, and filled in once it is there.
    let c = controller(api.clone(), secret_source()).await;
    let failed = || async {
        c.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("weft_waypoint_reconcile_errors_total ") && !l.ends_with(" 0"))
    };
    let start = std::time::Instant::now();
    while !failed().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the missing binding is counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.apply(binding());
    let want = vec![
        "ServiceAccount/shop/waypoint".to_owned(),
        "ServiceAccount/store/waypoint".to_owned(),
    ];
    assert!(
        until(Duration::from_secs(10), || bound(&c.api)
            == Some(want.clone()))
        .await,
        "{:?}",
        bound(&api)
    );
    let b = api.get("ClusterRoleBinding", "/weft-waypoint").unwrap();
    assert_eq!(b["subjects"][0]["apiGroup"], "");
    assert_eq!(b["roleRef"]["name"], "weft-waypoint");

    let (_, _, message) = condition(&api, "default", "Programmed").unwrap();
    assert!(
        message.contains("ServiceAccount shop/default existed before this Gateway")
            && message.contains("ClusterRole weft-waypoint"),
        "{message}"
    );
    let (_, _, message) = condition(&api, "waypoint", "Programmed").unwrap();
    assert!(!message.contains("read access"), "{message}");

    // A restart writes nothing, and does not strip anyone on the way.
    let written = api.patches("clusterrolebindings");
    drop(c);
    let c = controller(api.clone(), secret_source()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api.patches("clusterrolebindings"), written);
    assert_eq!(bound(&api), Some(want));

    // A Gateway gone (its account goes with it) or of another class: no access.
    api.delete("Gateway", "shop/waypoint");
    let mut moved = gateway("waypoint", "other-class", None, Value::Null);
    moved["metadata"]["namespace"] = json!("store");
    moved["metadata"]["uid"] = json!("uid-store-waypoint");
    api.apply(moved);
    assert!(
        until(Duration::from_secs(10), || bound(&c.api) == Some(vec![])).await,
        "{:?}",
        bound(&api)
    );
}

/// The env of the waypoint container of Deployment shop/`name`, by variable name.
fn waypoint_env(api: &FakeApi, name: &str) -> BTreeMap<String, String> {
    let d = api.get("Deployment", &format!("shop/{name}")).unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e["value"].as_str().unwrap_or_default().to_owned();
            (e["name"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

#[tokio::test]
async fn a_controller_given_a_collector_has_every_waypoint_export_its_spans_there() {
    let api = cluster();
    api.apply(mesh_configmap());
    let mesh_listener = json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}]);
    api.apply(gateway("waypoint", "weft-waypoint", None, mesh_listener));
    let tracing = crate::gateways::Tracing {
        otlp_endpoint: "http://otel-collector.observability:4317".to_owned(),
        sampling: 12.5,
    };
    let endpoint = |api: &FakeApi| {
        let env = waypoint_env(api, "waypoint");
        let get = |k: &str| env.get(k).cloned();
        (get("WEFT_OTLP_ENDPOINT"), get("WEFT_TRACE_SAMPLING"))
    };
    // The waypoint is there before tracing is turned on, as after an upgrade of the install.
    {
        let c = controller(api.clone(), secret_source()).await;
        let made = || c.api.get("Deployment", "shop/waypoint").is_some();
        assert!(until(Duration::from_secs(10), made).await);
        assert_eq!(endpoint(&api), (None, None));
    }
    {
        let mut opts = options(secret_source());
        opts.waypoint_tracing = Some(tracing.clone());
        let _c = controller_with(api.clone(), opts).await;
        let on = || endpoint(&api).0.is_some();
        assert!(
            until(Duration::from_secs(10), on).await,
            "the existing waypoint is given the collector"
        );
        assert_eq!(
            endpoint(&api),
            (Some(tracing.otlp_endpoint.clone()), Some("12.5".to_owned()))
        );
    }
    // Turned off again: the variables go.
    let _c = controller(api.clone(), secret_source()).await;
    let off = || endpoint(&api).0.is_none();
    assert!(until(Duration::from_secs(10), off).await);
}
