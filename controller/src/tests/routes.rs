//! Route status: what a route's author finds in `status.parents` after applying it.

use super::*;

fn service(name: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": "shop", "name": name, "labels": labels},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn route(kind: &str, name: &str, parent: &str, rules: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
           "metadata": {"namespace": "shop", "name": name, "generation": 3},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
                    "rules": rules}})
}

fn to(backends: &[&str]) -> Value {
    let refs: Vec<Value> = backends
        .iter()
        .map(|b| json!({"name": b, "port": 80}))
        .collect();
    json!([{"backendRefs": refs}])
}

/// Of weft's entry for the first parent: condition `type_` as (status, reason, message).
fn condition(
    api: &FakeApi,
    kind: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let r = api.get(kind, &format!("shop/{name}"))?;
    let entry = r["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/mesh-controller")?
        .clone();
    let c = entry["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((s("status"), s("reason"), s("message")))
}

fn reason(api: &FakeApi, kind: &str, name: &str, type_: &str) -> Option<(String, String)> {
    condition(api, kind, name, type_).map(|(s, r, _)| (s, r))
}

fn pair(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.to_owned(), reason.to_owned()))
}

#[tokio::test]
async fn each_route_says_whether_it_is_applied_and_what_its_backends_resolve_to() {
    let api = cluster();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "shop", "labels": {"weft.dev/use-waypoint": "waypoint"}}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    api.apply(service("web", "10.96.0.10", json!({})));
    api.apply(service("v2", "10.96.0.11", json!({})));
    // Opted out of the namespace's waypoint.
    api.apply(service(
        "plain",
        "10.96.0.12",
        json!({"weft.dev/use-waypoint": "none"}),
    ));
    api.apply(route("HTTPRoute", "split", "web", to(&["web", "v2"])));
    api.apply(route("HTTPRoute", "missing", "web", to(&["web", "gone"])));
    api.apply(route(
        "HTTPRoute",
        "regex",
        "web",
        json!([{"matches": [{"path": {"type": "RegularExpression", "value": "(unclosed"}}],
                "backendRefs": [{"name": "web", "port": 80}]}]),
    ));
    api.apply(route(
        "HTTPRoute",
        "sticky",
        "web",
        json!([{"sessionPersistence": {"sessionName": "s"}, "backendRefs": [{"name": "web", "port": 80}]}]),
    ));
    api.apply(route("HTTPRoute", "unbound", "plain", to(&["plain"])));
    api.apply(route("HTTPRoute", "orphan", "nope", to(&["web"])));
    api.apply(route(
        "HTTPRoute",
        "mirrored",
        "web",
        json!([{"backendRefs": [{"name": "web", "port": 80}],
                "filters": [{"type": "RequestMirror",
                             "requestMirror": {"backendRef": {"kind": "Bucket", "group": "s3.example", "name": "log"}}}]}]),
    ));
    api.apply(route(
        "GRPCRoute",
        "echo",
        "web",
        json!([{"matches": [{"method": {"service": "echo.Echo", "method": "Say"}}],
                "backendRefs": [{"name": "v2", "port": 80}]}]),
    ));
    // Another controller's entry (the route also attaches to its Gateway): left as it is.
    let mut shared = route("HTTPRoute", "shared", "web", to(&["web"]));
    shared["spec"]["parentRefs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ingress"}));
    let theirs = json!({"parentRef": {"name": "ingress"}, "controllerName": "example.com/gateway",
                        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                        "message": "theirs", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    shared["status"] = json!({"parents": [theirs]});
    api.apply(shared);

    let c = controller(api.clone(), secret_source()).await;
    let all = [
        ("HTTPRoute", "split"),
        ("HTTPRoute", "missing"),
        ("HTTPRoute", "regex"),
        ("HTTPRoute", "sticky"),
        ("HTTPRoute", "unbound"),
        ("HTTPRoute", "orphan"),
        ("HTTPRoute", "mirrored"),
        ("HTTPRoute", "shared"),
        ("GRPCRoute", "echo"),
    ];
    let written = || {
        all.iter()
            .all(|(k, n)| reason(&c.api, k, n, "ResolvedRefs").is_some())
    };
    assert!(until(Duration::from_secs(10), written).await);

    for (kind, name) in [
        ("HTTPRoute", "split"),
        ("GRPCRoute", "echo"),
        ("HTTPRoute", "shared"),
    ] {
        let (s, r, m) = condition(&api, kind, name, "Accepted").unwrap();
        assert_eq!(
            (s.as_str(), r.as_str()),
            ("True", "Accepted"),
            "{kind} {name}: {m}"
        );
        assert_eq!(m, "applied by waypoint shop/waypoint");
        assert_eq!(
            reason(&api, kind, name, "ResolvedRefs"),
            pair("True", "ResolvedRefs")
        );
    }
    let split = api.get("HTTPRoute", "shop/split").unwrap();
    let entry = &split["status"]["parents"][0];
    assert_eq!(
        entry["parentRef"],
        json!({"group": "", "kind": "Service", "name": "web", "port": 80})
    );
    assert_eq!(entry["conditions"][0]["observedGeneration"], 3);

    // A missing backend: the route applies (the rest of its traffic flows), the status names it.
    assert_eq!(
        reason(&api, "HTTPRoute", "missing", "Accepted"),
        pair("True", "Accepted")
    );
    let (s, r, m) = condition(&api, "HTTPRoute", "missing", "ResolvedRefs").unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("False", "BackendNotFound"));
    assert!(
        m.contains("spec.rules[0].backendRefs[1]")
            && m.contains("Service shop/gone does not exist"),
        "{m}"
    );

    for (name, field) in [
        ("regex", "spec.rules[0].matches[0].path.value"),
        ("sticky", "spec.rules[0].sessionPersistence"),
    ] {
        let (s, r, m) = condition(&api, "HTTPRoute", name, "Accepted").unwrap();
        assert_eq!(
            (s.as_str(), r.as_str()),
            ("False", "UnsupportedValue"),
            "{name}"
        );
        assert!(m.contains(field), "{name}: {m}");
    }
    let (_, r, m) = condition(&api, "HTTPRoute", "unbound", "Accepted").unwrap();
    assert_eq!(r, "Pending");
    assert!(m.contains("not bound to a waypoint"), "{m}");
    let (_, r, m) = condition(&api, "HTTPRoute", "orphan", "Accepted").unwrap();
    assert_eq!(r, "NoMatchingParent");
    assert!(m.contains("Service shop/nope does not exist"), "{m}");
    let (s, r, m) = condition(&api, "HTTPRoute", "mirrored", "ResolvedRefs").unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("False", "InvalidKind"));
    assert!(
        m.contains("requestMirror.backendRef") && m.contains("Bucket"),
        "{m}"
    );

    let shared = api.get("HTTPRoute", "shop/shared").unwrap();
    let parents = shared["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert_eq!(parents[0], theirs);

    // The backend appears: followed. A restart then writes nothing.
    api.apply(service("gone", "10.96.0.13", json!({})));
    let resolved =
        || reason(&c.api, "HTTPRoute", "missing", "ResolvedRefs") == pair("True", "ResolvedRefs");
    assert!(until(Duration::from_secs(10), resolved).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = (api.patches("httproutes"), api.patches("grpcroutes"));
    drop(c);
    let c = controller(api.clone(), secret_source()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        (c.api.patches("httproutes"), c.api.patches("grpcroutes")),
        before
    );
}
