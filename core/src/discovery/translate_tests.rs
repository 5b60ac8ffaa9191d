//! The translation, table-driven on real `k8s-openapi` objects (parsed from the YAML a user
//! would apply).

use super::manifests::{ManifestSet, read_text};
use super::translate::{Translation, translate};
use crate::model::CaptureMode;

fn objects(yaml: &str) -> ManifestSet {
    let mut set = ManifestSet::default();
    let mut errors = Vec::new();
    read_text(yaml, "test.yaml", &mut set, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    set
}

fn run(yaml: &str) -> Translation {
    translate(&objects(yaml).objects)
}

fn ns(name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"
    )
}

/// A scheduled, running pod with the given extra metadata and status.
fn pod(ns: &str, name: &str, labels: &str, ips: &[&str]) -> String {
    let ips: Vec<String> = ips.iter().map(|ip| format!("{{ip: {ip}}}")).collect();
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, labels: {{{labels}}}}}\n\
         spec:\n  nodeName: node1\n  serviceAccountName: sa-{name}\n  containers: [{{name: app, image: x, ports: [{{name: http, containerPort: 8080}}]}}]\n\
         status: {{phase: Running, podIPs: [{}]}}\n",
        ips.join(", ")
    )
}

fn service(ns: &str, name: &str, selector: &str, target_port: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: 10.96.0.10, selector: {{{selector}}}, ports: [{{name: web, port: 80, targetPort: {target_port}}}]}}\n"
    )
}

fn mode_of(t: &Translation, name: &str) -> Option<CaptureMode> {
    t.workloads.iter().find(|w| w.name == name).map(|w| w.mode)
}

#[test]
fn namespace_label_meshes_its_pods_and_only_them() {
    let cases = [
        ("weft.dev/mode: ambient", Some(CaptureMode::Ambient)),
        ("weft.dev/mode: none", Some(CaptureMode::None)),
        ("", Some(CaptureMode::None)),
        ("istio.io/dataplane-mode: ambient", Some(CaptureMode::None)),
    ];
    for (labels, want) in cases {
        let t = run(&(ns("web", labels) + &pod("web", "a", "app: a", &["10.0.0.1"])));
        assert_eq!(mode_of(&t, "a"), want, "namespace labels {labels:?}");
        assert!(t.problems.is_empty());
    }
    // A pod of another, unlabelled namespace is never meshed by this namespace's label.
    let t = run(&(ns("web", "weft.dev/mode: ambient")
        + &pod("web", "a", "", &["10.0.0.1"])
        + &pod("other", "b", "", &["10.0.0.2"])));
    assert_eq!(mode_of(&t, "a"), Some(CaptureMode::Ambient));
    assert_eq!(mode_of(&t, "b"), Some(CaptureMode::None));
}

#[test]
fn pod_label_opts_one_pod_out() {
    let t = run(&(ns("web", "weft.dev/mode: ambient")
        + &pod("web", "in", "app: x", &["10.0.0.1"])
        + &pod("web", "out", "weft.dev/mode: none", &["10.0.0.2"])));
    assert_eq!(mode_of(&t, "in"), Some(CaptureMode::Ambient));
    assert_eq!(mode_of(&t, "out"), Some(CaptureMode::None));
}

#[test]
fn pods_that_are_not_workloads_are_left_out() {
    let base = pod("web", "p", "", &["10.0.0.1"]);
    let cases = [
        (
            "host network",
            base.replace("nodeName: node1", "nodeName: node1\n  hostNetwork: true"),
        ),
        (
            "no IP yet",
            base.replace("podIPs: [{ip: 10.0.0.1}]", "podIPs: []"),
        ),
        (
            "pending, no status",
            base.replace("status: {phase: Running, podIPs: [{ip: 10.0.0.1}]}", ""),
        ),
        ("not scheduled", base.replace("  nodeName: node1\n", "")),
        (
            "succeeded",
            base.replace("phase: Running", "phase: Succeeded"),
        ),
        ("failed", base.replace("phase: Running", "phase: Failed")),
    ];
    for (case, yaml) in cases {
        let t = run(&(ns("web", "weft.dev/mode: ambient") + &yaml));
        assert!(t.workloads.is_empty(), "{case}: {:?}", t.workloads);
        assert!(t.problems.is_empty(), "{case}: {:?}", t.problems);
    }
}

#[test]
fn pod_identity_addresses_and_multi_ip() {
    let t = run(&(ns("web", "weft.dev/mode: ambient")
        + &pod(
            "web",
            "dual",
            "app: d",
            &["10.0.0.7", "fd00::7", "10.0.0.7"],
        )));
    let w = &t.workloads[0];
    assert_eq!(w.ips.len(), 2, "duplicates dropped, both families kept");
    assert_eq!(w.ips[0].to_string(), "10.0.0.7");
    assert_eq!(w.ips[1].to_string(), "fd00::7");
    assert_eq!(w.service_account, "sa-dual");
    assert_eq!(w.uid.as_deref(), Some("uid-dual"));
    assert_eq!(w.node, "node1");
    // No serviceAccountName: the namespace's `default` account, as Kubernetes assigns.
    let t = run(&pod("web", "p", "", &["10.0.0.1"]).replace("  serviceAccountName: sa-p\n", ""));
    assert_eq!(t.workloads[0].service_account, "default");
    // A bad address is a problem, not a workload.
    let t = run(&pod("web", "p", "", &["10.0.0.999"]));
    assert!(t.workloads.is_empty());
    assert_eq!(t.problems[0].path, "status.podIPs[0].ip");
    // Two live pods claiming one address: the second is reported, not half-applied.
    let t = run(&(pod("web", "a", "", &["10.0.0.1"]) + &pod("web", "b", "", &["10.0.0.1"])));
    assert_eq!(t.workloads.len(), 1);
    assert!(
        t.problems[0]
            .message
            .contains("also the address of Pod web/a"),
        "{:?}",
        t.problems
    );
}

#[test]
fn terminating_pod_stays_meshed_but_is_no_endpoint() {
    let yaml = ns("web", "weft.dev/mode: ambient")
        + &pod("web", "old", "app: web", &["10.0.0.1"]).replace(
            "uid: uid-old,",
            "uid: uid-old, deletionTimestamp: '2026-12-03T00:00:00Z',",
        )
        + &pod("web", "new", "app: web", &["10.0.0.2"])
        + &service("web", "web", "app: web", "8080");
    let t = run(&yaml);
    assert_eq!(mode_of(&t, "old"), Some(CaptureMode::Ambient));
    assert_eq!(
        t.services[0].endpoints.as_deref(),
        Some(&["web/new".to_string()][..])
    );
}

fn slice(endpoints: &str, port: &str) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-abc, namespace: web, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{port}]\nendpoints:\n{endpoints}"
    )
}

fn endpoint(pod: &str, ip: &str, ready: &str) -> String {
    format!(
        "  - {{addresses: [{ip}], conditions: {{ready: {ready}}}, targetRef: {{kind: Pod, name: {pod}, namespace: web}}}}\n"
    )
}

#[test]
fn endpoint_slices_give_ready_endpoints_and_named_ports() {
    let pods = ns("web", "weft.dev/mode: ambient")
        + &pod("web", "a", "app: web", &["10.0.0.1"])
        + &pod("web", "b", "app: web", &["10.0.0.2"])
        + &pod("web", "c", "app: web", &["10.0.0.3"]);
    let cases: [(&str, String, &[&str], Option<u16>); 4] = [
        (
            "ready, not ready, ready unset",
            slice(
                &(endpoint("a", "10.0.0.1", "true")
                    + &endpoint("b", "10.0.0.2", "false")
                    + &endpoint("c", "10.0.0.3", "null")),
                "{name: web, port: 9090}",
            ),
            &["web/a", "web/c"],
            Some(9090),
        ),
        (
            "an endpoint whose pod is unknown",
            slice(
                &endpoint("gone", "10.0.0.9", "true"),
                "{name: web, port: 9090}",
            ),
            &[],
            Some(9090),
        ),
        (
            "no slice: the selector and the pods' container port named http",
            String::new(),
            &["web/a", "web/b", "web/c"],
            Some(8080),
        ),
        (
            "a slice with no endpoints yet",
            slice("  []\n", "{name: web, port: 9090}").replace("endpoints:\n  []", "endpoints: []"),
            &[],
            Some(9090),
        ),
    ];
    for (case, slices, want, target) in cases {
        let t = run(&(pods.clone() + &service("web", "web", "app: web", "http") + &slices));
        assert!(t.problems.is_empty(), "{case}: {:?}", t.problems);
        let s = &t.services[0];
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(s.endpoints.as_ref(), Some(&want), "{case}");
        assert_eq!(s.ports[0].target_port, target, "{case}");
        assert_eq!(s.ports[0].port, 80);
        assert_eq!(s.vips[0].to_string(), "10.96.0.10");
    }
}

#[test]
fn a_service_never_selects_pods_of_another_namespace() {
    let yaml = ns("web", "weft.dev/mode: ambient")
        + &ns("evil", "weft.dev/mode: ambient")
        + &pod("web", "a", "app: web", &["10.0.0.1"])
        + &pod("evil", "x", "app: web", &["10.0.0.66"])
        + &service("web", "web", "app: web", "8080");
    let t = run(&yaml);
    assert_eq!(
        t.services[0].endpoints.as_deref(),
        Some(&["web/a".to_string()][..])
    );
    // Nor through an EndpointSlice written by hand that names one: reported and left out.
    let s = slice(
        &(endpoint("a", "10.0.0.1", "true")
            + &endpoint("x", "10.0.0.66", "true").replace("namespace: web}", "namespace: evil}")),
        "{name: web, port: 8080}",
    );
    let t = run(&(yaml + &s));
    assert_eq!(
        t.services[0].endpoints.as_deref(),
        Some(&["web/a".to_string()][..])
    );
    assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
    assert!(t.problems[0].message.contains("Pod evil/x"));
}

#[test]
fn services_that_are_not_meshed_are_left_out_and_ports_filtered() {
    let svc = service("web", "web", "app: web", "8080");
    let cases = [
        (
            "headless",
            svc.replace("clusterIP: 10.96.0.10", "clusterIP: None"),
        ),
        (
            "external name",
            svc.replace(
                "spec: {",
                "spec: {type: ExternalName, externalName: example.com, ",
            ),
        ),
        (
            "UDP only",
            svc.replace("port: 80,", "port: 80, protocol: UDP,"),
        ),
    ];
    for (case, yaml) in cases {
        let t = run(&yaml);
        assert!(t.services.is_empty(), "{case}");
        assert!(t.problems.is_empty(), "{case}: {:?}", t.problems);
    }
    let t = run(&svc.replace("ports: [", "ports: [{name: dns, port: 53, protocol: UDP}, "));
    assert_eq!(t.services[0].ports.len(), 1);
    let t = run(&svc.replace(
        "clusterIP: 10.96.0.10",
        "clusterIPs: [10.96.0.10, 'fd00::10']",
    ));
    assert_eq!(t.services[0].vips.len(), 2);
}

#[test]
fn waypoint_label_on_namespace_or_service() {
    let t =
        run(&(ns("web", "weft.dev/use-waypoint: wp") + &service("web", "web", "app: web", "8080")));
    assert_eq!(t.services[0].waypoint.as_deref(), Some("wp"));
    let svc = service("web", "web", "app: web", "8080").replace(
        "namespace: web}",
        "namespace: web, labels: {weft.dev/use-waypoint: mine}}",
    );
    let t = run(&(ns("web", "weft.dev/use-waypoint: wp") + &svc));
    assert_eq!(t.services[0].waypoint.as_deref(), Some("mine"));
    // `none` opts a Service out of its namespace's waypoint.
    let t = run(&(ns("web", "weft.dev/use-waypoint: wp") + &svc.replace("mine", "none")));
    assert_eq!(t.services[0].waypoint, None);
}

const POLICY: &str = "---\napiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
    metadata: {name: p, namespace: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: ACTION\n  rules:\n  - from: [{source: {ipBlocks: [BLOCK]}}]\n";

#[test]
fn an_invalid_policy_is_reported_and_fails_closed() {
    let valid = POLICY
        .replace("ACTION", "ALLOW")
        .replace("BLOCK", "10.0.0.0/8");
    let t = run(&valid);
    assert!(t.problems.is_empty());
    assert_eq!(t.policies[0].key(), "web/p");
    assert_eq!(t.policies[0].rules.len(), 1);

    for (action, rules_applied) in [("ALLOW", Some(0)), ("DENY", Some(1)), ("AUDIT", None)] {
        let t = run(&POLICY
            .replace("ACTION", action)
            .replace("BLOCK", "not-a-cidr"));
        assert_eq!(t.problems.len(), 1, "{action}");
        let p = &t.problems[0];
        assert_eq!(
            p.path, "spec.rules[0].from[0].source.ipBlocks[0]",
            "{action}"
        );
        assert!(
            p.object.starts_with("AuthorizationPolicy web/p"),
            "{}",
            p.object
        );
        // ALLOW becomes "allows nothing", DENY "denies all it selects": never wider.
        assert_eq!(
            t.policies.first().map(|p| p.rules.len()),
            rules_applied,
            "{action}"
        );
        if action == "DENY" {
            assert_eq!(t.policies[0].rules[0], Default::default());
        }
    }
}

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: web, creationTimestamp: "2026-01-02T03:04:05Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: web}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: echo.Echo, method: Say}}]
    backendRefs: [{name: echo-v2, port: 50051}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: web}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "(x"}}]
    backendRefs: [{name: web-v1, port: 80}]
"#;

#[test]
fn routes_translate_and_a_broken_one_is_left_out_with_a_problem() {
    use crate::model::route::{PathMatchType, RouteKind};
    let t = run(ROUTES);
    let keys: Vec<(RouteKind, String)> = t.routes.iter().map(|r| (r.kind, r.key())).collect();
    assert_eq!(
        keys,
        vec![
            (RouteKind::Http, "web/split".into()),
            (RouteKind::Grpc, "web/echo".into())
        ]
    );
    assert_eq!(t.routes[0].created.as_deref(), Some("2026-01-02T03:04:05Z"));
    let grpc_path = t.routes[1].rules[0].matches[0]
        .path
        .as_ref()
        .expect("lowered");
    assert_eq!(
        (grpc_path.kind, grpc_path.value.as_str()),
        (PathMatchType::Exact, "/echo.Echo/Say")
    );
    assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
    let p = &t.problems[0];
    assert!(p.object.starts_with("HTTPRoute web/broken"), "{}", p.object);
    assert_eq!(p.path, "spec.rules[0].matches[0].path.value");
    assert!(p.message.contains("not applied"), "{}", p.message);
}

#[test]
fn traffic_policies_translate_and_a_mistaken_one_is_left_out_with_its_field() {
    let policy = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: networking.weft.dev/v1alpha1\nkind: TrafficPolicy\n\
             metadata: {{name: {name}, namespace: web}}\n\
             spec:\n  targetRefs: [{{group: \"\", kind: Service, name: web}}]\n{spec}"
        )
    };
    let t = run(&(policy(
        "limits",
        "  connectionPool: {maxRequests: 10}\n  rateLimits: [{maxTokens: 5, fillInterval: 1s}]\n",
    ) + &policy(
        "broken",
        "  faults: [{abort: {httpStatus: 503, percentage: 150}}]\n",
    )));
    let names: Vec<&str> = t.traffic_policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["limits"]);
    let problems: Vec<String> = t.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        vec![
            "TrafficPolicy web/broken (test.yaml document 2): spec.faults[0].abort.percentage: \
             150 is not a percentage from 0 to 100"
        ]
    );
    // A field the schema does not have is refused where the manifest is read.
    let mut set = ManifestSet::default();
    let mut errors = Vec::new();
    read_text(
        &policy("typo", "  loadBalancing: {}\n"),
        "t.yaml",
        &mut set,
        &mut errors,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.to_string().contains("loadBalancing")),
        "{errors:?}"
    );
}
