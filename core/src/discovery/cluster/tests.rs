//! The API-server source against a fake API server under `kube::Client`: the real watchers,
//! batcher and translation above the HTTP boundary.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::fake::{FakeApi, Grants};
use super::*;
use crate::discovery::{Translation, translate};
use crate::model::CaptureMode;

const MANIFESTS: &str = include_str!("../../../../deploy/manifests/weft.yaml");

/// What was asked of `api` is what `grants` (the chart's RBAC for `who`) allow.
fn assert_permitted(api: &FakeApi, grants: &Grants, who: &str) {
    assert!(!grants.is_empty(), "no RBAC for {who} in the manifests");
    let refused = grants.refused(&api.asked());
    assert!(
        refused.is_empty(),
        "the chart's RBAC does not grant {who}: {refused:#?}"
    );
}

fn namespace(name: &str, mode: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"weft.dev/mode": mode}}})
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                        "labels": {"app": "web"},
                        "annotations": {"weft.dev/netns": "/proc/1/ns/net"},
                        "managedFields": [{"manager": "kubectl"}]},
           "spec": {"nodeName": "node1", "serviceAccountName": "web",
                    "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "b"}],
                                    "ports": [{"name": "http", "containerPort": 8080}]}],
                    "volumes": [{"name": "data", "emptyDir": {}}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn cluster(api: &FakeApi) {
    api.apply(namespace("shop", "ambient"));
    api.apply(pod("web-1", "10.0.0.1"));
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}));
    api.apply(json!({"apiVersion": "security.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-client", "namespace": "shop"},
        "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}));
}

struct Running {
    api: FakeApi,
    status: SharedStatus,
    versions: tokio::sync::mpsc::Receiver<Translation>,
    cancel: CancellationToken,
}

fn run(api: &FakeApi) -> Running {
    run_with(api, &super::KINDS)
}

fn run_with(api: &FakeApi, kinds: &[Kind]) -> Running {
    let status = new_status(kinds);
    let client = client_over(api.clone(), &status);
    let cancel = CancellationToken::new();
    let batching = Batching {
        quiet: Duration::from_millis(30),
        max_delay: Duration::from_millis(300),
    };
    let versions = start(
        client,
        status.clone(),
        SourceMetrics::default(),
        batching,
        cancel.clone(),
        kinds,
        translate,
    );
    Running {
        api: api.clone(),
        status,
        versions,
        cancel,
    }
}

impl Running {
    /// The next version that satisfies `want`, within a few seconds.
    async fn until(&mut self, what: &str, want: impl Fn(&Translation) -> bool) -> Translation {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.versions.recv()).await {
                Ok(Some(t)) if want(&t) => return t,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("source stopped while waiting for {what}"),
                Err(_) => panic!(
                    "no version with {what}; status: {:?}",
                    self.status.lock().map(|s| s.clone())
                ),
            }
        }
    }

    async fn until_status(&self, what: &str, want: impl Fn(&SourceStatus) -> bool) {
        for _ in 0..400 {
            if want(&self.status.lock().unwrap_or_else(|p| p.into_inner())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "status never showed {what}: {:?}",
            self.status.lock().map(|s| s.clone())
        );
    }

    /// Every kind's watch open again after a disruption.
    async fn until_watching(&self) {
        for _ in 0..400 {
            if [
                "namespaces",
                "pods",
                "services",
                "endpointslices",
                "authorizationpolicies",
            ]
            .iter()
            .all(|r| self.api.watching(r) > 0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("watches were not reopened");
    }
}

/// The cluster served, its first version received and every watch open.
async fn watching(api: &FakeApi) -> Running {
    cluster(api);
    let mut src = run(api);
    src.until("the initial list", |t| !t.workloads.is_empty())
        .await;
    src.until_watching().await;
    src
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn mode(t: &Translation, pod: &str) -> Option<CaptureMode> {
    t.workloads.iter().find(|w| w.name == pod).map(|w| w.mode)
}

#[tokio::test]
async fn initial_list_then_events_without_relisting() {
    let api = FakeApi::default();
    cluster(&api);
    let mut src = run(&api);
    let t = src
        .until("the initial list", |t| !t.workloads.is_empty())
        .await;
    assert_eq!(mode(&t, "web-1"), Some(CaptureMode::Ambient));
    assert_eq!(t.services.len(), 1);
    assert_eq!(t.policies.len(), 1);
    // Slimmed: the pod's own netns annotation is never honoured from the API.
    assert_eq!(t.workloads[0].netns, None);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    src.until_watching().await;

    // Add, modify and delete, each arriving as an event.
    api.apply(pod("web-2", "10.0.0.2"));
    src.until("web-2 added", |t| mode(t, "web-2").is_some())
        .await;
    api.apply(namespace("shop", "none"));
    let t = src
        .until("the label removed", |t| {
            mode(t, "web-1") == Some(CaptureMode::None)
        })
        .await;
    assert_eq!(mode(&t, "web-2"), Some(CaptureMode::None));
    api.delete("Pod", "shop/web-1");
    let t = src
        .until("web-1 deleted", |t| mode(t, "web-1").is_none())
        .await;
    assert!(mode(&t, "web-2").is_some());
    api.delete("AuthorizationPolicy", "shop/allow-client");
    src.until("the policy deleted", |t| t.policies.is_empty())
        .await;

    for resource in [
        "namespaces",
        "pods",
        "services",
        "endpointslices",
        "authorizationpolicies",
    ] {
        assert_eq!(
            api.lists(resource),
            1,
            "{resource} listed once, then only watched"
        );
    }
    let s = src.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let s = &s;
    assert!(s.stale().is_empty(), "{:?}", s.stale());
    assert_eq!(s.kind(Kind::Pod).map(|k| k.objects), Some(1));
    assert_permitted(&api, &Grants::bound(MANIFESTS, "weft", "weftd"), "weftd");
}

#[tokio::test]
async fn dropped_watch_is_resumed_from_its_resource_version() {
    let api = FakeApi::default();
    let mut src = watching(&api).await;

    api.drop_watches();
    // Made while no watch is open: the resumed watch replays it from its resourceVersion.
    api.apply(pod("web-2", "10.0.0.2"));
    src.until("web-2 after the resume", |t| mode(t, "web-2").is_some())
        .await;
    assert_eq!(api.lists("pods"), 1, "a resumed watch does not list again");
}

#[tokio::test]
async fn expired_resource_version_relists_and_catches_missed_deletes() {
    let api = FakeApi::default();
    let mut src = watching(&api).await;

    api.set_down(true);
    // Missed entirely: no watch sees this delete, and the history that held it is compacted.
    api.delete("Pod", "shop/web-1");
    api.apply(pod("web-3", "10.0.0.3"));
    api.compact();
    api.set_down(false);
    let t = src
        .until("the relisted pods", |t| {
            mode(t, "web-1").is_none() && mode(t, "web-3").is_some()
        })
        .await;
    assert_eq!(t.workloads.len(), 1);
    assert_eq!(api.lists("pods"), 2, "410 Gone: listed again, once");
    src.until_status("the pods' relist counted and the errors cleared", |s| {
        s.kind(Kind::Pod).is_some_and(|k| k.relists == 1) && s.stale().is_empty()
    })
    .await;
}

#[tokio::test]
async fn api_server_gone_keeps_the_last_version_and_says_it_is_stale() {
    let api = FakeApi::default();
    let mut src = watching(&api).await;
    let versions = src.status.lock().map(|s| s.versions).unwrap_or(0);

    api.set_down(true);
    src.until_status("every kind failing", |s| {
        s.kinds
            .iter()
            .all(|k| k.error.is_some() && k.failing_since.is_some())
    })
    .await;
    let stale = src.status.lock().map(|s| s.stale()).unwrap_or_default();
    assert!(
        stale
            .iter()
            .any(|s| s.contains("Pod watch failing") && s.contains("down")),
        "{stale:?}"
    );
    // Nothing replaces the last version while the server is gone: no empty mesh.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), src.versions.recv())
            .await
            .is_err(),
        "a version was made while the API server was down"
    );
    assert_eq!(src.status.lock().map(|s| s.versions).unwrap_or(0), versions);

    api.set_down(false);
    src.until_status("recovered", |s| s.stale().is_empty())
        .await;
    src.until_watching().await;
    api.apply(pod("web-2", "10.0.0.2"));
    let t = src
        .until("a change after recovery", |t| mode(t, "web-2").is_some())
        .await;
    assert_eq!(mode(&t, "web-1"), Some(CaptureMode::Ambient));
}

#[tokio::test]
async fn a_missing_crd_holds_the_first_version_and_names_the_cause() {
    let api = FakeApi::default();
    cluster(&api);
    api.set_handler(Box::new(|_, path, _| {
        path.ends_with("/authorizationpolicies").then(|| {
            (
                http::StatusCode::NOT_FOUND,
                super::fake::status_body(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
        })
    }));
    let mut src = run(&api);
    src.until_status("the CRD hint", |s| {
        s.kind(Kind::AuthorizationPolicy)
            .and_then(|k| k.error.as_deref())
            .is_some_and(|e| e.contains("is the CRD installed"))
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), src.versions.recv())
            .await
            .is_err(),
        "a first version without policies would allow what they deny"
    );
}

/// Routes are the waypoints' business: watched only with `WAYPOINT_KINDS`, translated like
/// the manifests source's, and a node without the Gateway API CRDs is not held up by them.
#[tokio::test]
async fn routes_are_watched_by_waypoints_only() {
    let api = FakeApi::default();
    cluster(&api);
    api.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );
    // Fields of Gateway API that weft does not implement, on one route of each kind: those
    // are left out with the field named, the others still apply (decoded as one list, they
    // would have failed the whole watch).
    api.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "sticky", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
                 "rules": [{"sessionPersistence": {"sessionName": "s"},
                            "backendRefs": [{"name": "api", "port": 80}]}]}}),
    );
    api.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "echo", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                 "rules": [{"sessionPersistence": {"sessionName": "s"}}]}}),
    );
    let mut waypoint = run_with(&api, &super::WAYPOINT_KINDS);
    let t = waypoint.until("the route", |t| !t.routes.is_empty()).await;
    let keys: Vec<String> = t.routes.iter().map(|r| r.key()).collect();
    assert_eq!(keys, ["shop/web"]);
    for (object, path) in [
        ("HTTPRoute shop/sticky", "spec.rules[0].sessionPersistence"),
        ("GRPCRoute shop/echo", "spec.rules[0].sessionPersistence"),
    ] {
        let p = t
            .problems
            .iter()
            .find(|p| p.object.starts_with(object))
            .unwrap_or_else(|| panic!("no problem for {object}: {:?}", t.problems));
        assert_eq!(p.path, path);
        assert!(p.message.contains("unknown field"), "{}", p.message);
    }
    drop(waypoint);
    // What the controller binds each waypoint to: nothing asked for is refused.
    let grants = Grants::cluster_role(MANIFESTS, "weft-waypoint");
    assert_permitted(&api, &grants, "a waypoint");

    // A node: the routes' API answering 404 does not matter, it is never asked.
    api.set_handler(Box::new(|_, path, _| {
        path.ends_with("/httproutes").then(|| {
            (
                http::StatusCode::NOT_FOUND,
                super::fake::status_body(404, "NotFound", "no such resource"),
            )
        })
    }));
    let mut node = run(&api);
    let t = node
        .until("the first version", |t| !t.workloads.is_empty())
        .await;
    assert!(t.routes.is_empty());
    // A waypoint without the CRDs waits, and says why.
    let waypoint = run_with(&api, &super::WAYPOINT_KINDS);
    waypoint
        .until_status("the Gateway API hint", |s| {
            s.kind(Kind::HttpRoute)
                .and_then(|k| k.error.as_deref())
                .is_some_and(|e| e.contains("Gateway API CRDs"))
        })
        .await;
}
