//! Waypoint (L7) authorization: policies attached with `targetRefs`, evaluated per request.
//! Every case evaluates a request from `sleep` to Service `default/echo` through waypoint
//! `default/waypoint` unless it says otherwise.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::model::policy::AuthorizationPolicy;

const ROOT: &str = "weft-system";
const SLEEP: &str = "spiffe://cluster.local/ns/sleep/sa/sleep";

/// Policy YAML for one policy in `default` attached to Service `echo`.
macro_rules! on_echo {
    ($name:literal, $action:literal, $rules:literal) => {
        concat!(
            "- {name: ",
            $name,
            ", namespace: default, targetRefs: [{kind: Service, group: '', name: echo}], action: ",
            $action,
            ", rules: ",
            $rules,
            "}\n"
        )
    };
}

struct Req {
    method: &'static str,
    path: String,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    principal: Option<&'static str>,
    namespace: Option<&'static str>,
    port: u16,
    service: &'static str,
    waypoint: &'static str,
}

fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        path: path.to_owned(),
        host: "echo.default.svc.cluster.local:8080",
        headers: Vec::new(),
        principal: Some(SLEEP),
        namespace: Some("sleep"),
        port: 8080,
        service: "echo",
        waypoint: "waypoint",
    }
}

impl Req {
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
    fn peer(mut self, principal: &'static str, namespace: &'static str) -> Self {
        self.principal = Some(principal);
        self.namespace = Some(namespace);
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn service(mut self, s: &'static str) -> Self {
        self.service = s;
        self
    }
    fn waypoint(mut self, w: &'static str) -> Self {
        self.waypoint = w;
        self
    }
}

fn index(yaml: &str) -> PolicyIndex {
    let policies: Vec<AuthorizationPolicy> =
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("policies do not parse: {e}"));
    for p in &policies {
        assert_eq!(p.validate(), vec![], "{}", p.key());
    }
    PolicyIndex::new(policies, ROOT)
}

fn eval(index: &PolicyIndex, r: &Req) -> Decision {
    let mut headers = HeaderMap::new();
    for (name, value) in &r.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static(value),
        );
    }
    let conn = ConnectionInfo {
        source_principal: r.principal,
        source_namespace: r.namespace,
        source_ip: "10.0.1.5".parse::<IpAddr>().unwrap(),
        destination_ip: "10.96.0.10".parse::<IpAddr>().unwrap(),
        destination_port: r.port,
    };
    let req = RequestInfo {
        method: r.method,
        path: &r.path,
        host: r.host,
        headers: &headers,
    };
    index.evaluate_waypoint("default", r.service, r.waypoint, &conn, &req)
}

fn allowed_by(p: &str) -> DecisionReason {
    DecisionReason::AllowedBy { policy: p.into() }
}

fn denied_by(p: &str) -> DecisionReason {
    DecisionReason::DeniedBy { policy: p.into() }
}

/// Asserts the reason (and that `allowed` agrees with it), with the request in the message.
#[track_caller]
fn check(index: &PolicyIndex, r: Req, want: DecisionReason) {
    let got = eval(index, &r);
    let want_allowed = matches!(
        want,
        DecisionReason::NoPolicies | DecisionReason::AllowedBy { .. }
    );
    assert!(
        got.reason == want && got.allowed == want_allowed,
        "{} {} host {} headers {:?} port {}: got `{got}`, want {want:?}",
        r.method,
        r.path,
        r.host,
        r.headers,
        r.port
    );
}

#[test]
fn l7_allow_get_allows_get_and_denies_delete() {
    let ix = index(on_echo!(
        "get-only",
        "ALLOW",
        "[{to: [{operation: {methods: [GET]}}]}]"
    ));
    check(&ix, get("/"), allowed_by("default/get-only"));
    check(
        &ix,
        get("/").method("DELETE"),
        DecisionReason::NoAllowMatched,
    );
    // Case-sensitive, as Istio.
    check(&ix, get("/").method("get"), DecisionReason::NoAllowMatched);
}

#[test]
fn l7_deny_admin_paths() {
    let ix = index(on_echo!(
        "no-admin",
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin*"]}}]}]"#
    ));
    check(&ix, get("/admin"), denied_by("default/no-admin"));
    check(&ix, get("/admin/users"), denied_by("default/no-admin"));
    check(&ix, get("/public"), DecisionReason::NoPolicies);
    // The waypoint normalises first, so the usual bypasses land on the policy.
    for raw in [
        "/a/../admin",
        "//admin",
        "/%61dmin",
        "/x%2F..%2Fadmin",
        "/x\\..\\admin",
    ] {
        let r = Req {
            path: normalize_path(raw).unwrap(),
            ..get("/")
        };
        check(&ix, r, denied_by("default/no-admin"));
    }
}

#[test]
fn l7_path_patterns() {
    let ix = index(on_echo!(
        "p",
        "ALLOW",
        r#"[{to: [{operation: {paths: ["/exact", "/api/*", "*.css", "/star*"]}}]}]"#
    ));
    check(&ix, get("/exact"), allowed_by("default/p"));
    check(&ix, get("/exact/"), DecisionReason::NoAllowMatched);
    check(&ix, get("/api/v1"), allowed_by("default/p"));
    check(&ix, get("/api"), DecisionReason::NoAllowMatched);
    check(&ix, get("/s/site.css"), allowed_by("default/p"));
    check(&ix, get("/Exact"), DecisionReason::NoAllowMatched);

    let ix = index(on_echo!(
        "not-private",
        "ALLOW",
        r#"[{to: [{operation: {notPaths: ["/private*"]}}]}]"#
    ));
    check(&ix, get("/public"), allowed_by("default/not-private"));
    check(&ix, get("/private/x"), DecisionReason::NoAllowMatched);
}

#[test]
fn l7_not_methods() {
    let ix = index(on_echo!(
        "no-writes",
        "ALLOW",
        "[{to: [{operation: {notMethods: [DELETE, PUT]}}]}]"
    ));
    check(&ix, get("/"), allowed_by("default/no-writes"));
    check(
        &ix,
        get("/").method("POST"),
        allowed_by("default/no-writes"),
    );
    check(
        &ix,
        get("/").method("DELETE"),
        DecisionReason::NoAllowMatched,
    );
    check(&ix, get("/").method("PUT"), DecisionReason::NoAllowMatched);
}

#[test]
fn l7_methods_and_paths_in_one_operation_must_both_match() {
    let ix = index(on_echo!(
        "no-delete-admin",
        "DENY",
        r#"[{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]"#
    ));
    check(
        &ix,
        get("/admin").method("DELETE"),
        denied_by("default/no-delete-admin"),
    );
    check(&ix, get("/admin"), DecisionReason::NoPolicies);
    check(
        &ix,
        get("/other").method("DELETE"),
        DecisionReason::NoPolicies,
    );
}

#[test]
fn l7_hosts_are_case_insensitive_and_port_optional() {
    let ix = index(on_echo!(
        "h",
        "ALLOW",
        r#"[{to: [{operation: {hosts: ["Echo.Default.svc.cluster.local", "*.Example.COM", "exact:9090", "[fd00::1]"]}}]}]"#
    ));
    let allowed = allowed_by("default/h");
    check(
        &ix,
        get("/").host("echo.default.svc.cluster.local"),
        allowed.clone(),
    );
    check(
        &ix,
        get("/").host("ECHO.default.SVC.cluster.local"),
        allowed.clone(),
    );
    // A pattern without a port covers any port.
    check(
        &ix,
        get("/").host("echo.default.svc.cluster.local:8080"),
        allowed.clone(),
    );
    check(&ix, get("/").host("api.example.com"), allowed.clone());
    check(&ix, get("/").host("API.EXAMPLE.com:443"), allowed.clone());
    check(&ix, get("/").host("[fd00::1]:8080"), allowed.clone());
    check(&ix, get("/").host("[FD00::1]"), allowed.clone());
    // A pattern with a port is compared as written.
    check(&ix, get("/").host("exact:9090"), allowed.clone());
    check(
        &ix,
        get("/").host("exact:8080"),
        DecisionReason::NoAllowMatched,
    );
    check(&ix, get("/").host("exact"), DecisionReason::NoAllowMatched);
    check(&ix, get("/").host("echo"), DecisionReason::NoAllowMatched);
    check(
        &ix,
        get("/").host("example.com.evil"),
        DecisionReason::NoAllowMatched,
    );
    check(&ix, get("/").host(""), DecisionReason::NoAllowMatched);

    // DENY on a host cannot be bypassed by adding a port or changing case.
    let ix = index(on_echo!(
        "no-internal",
        "DENY",
        r#"[{to: [{operation: {hosts: ["internal.example.com"]}}]}]"#
    ));
    check(
        &ix,
        get("/").host("Internal.Example.com:80"),
        denied_by("default/no-internal"),
    );
    check(&ix, get("/"), DecisionReason::NoPolicies);

    let ix = index(on_echo!(
        "not-internal",
        "ALLOW",
        r#"[{to: [{operation: {notHosts: ["internal.example.com"]}}]}]"#
    ));
    check(&ix, get("/"), allowed_by("default/not-internal"));
    check(
        &ix,
        get("/").host("INTERNAL.example.com:8080"),
        DecisionReason::NoAllowMatched,
    );
}

#[test]
fn l7_ports_are_the_service_port() {
    let ix = index(on_echo!(
        "p",
        "ALLOW",
        "[{to: [{operation: {ports: [8080], methods: [GET]}}]}]"
    ));
    check(&ix, get("/"), allowed_by("default/p"));
    check(&ix, get("/").port(9090), DecisionReason::NoAllowMatched);
    let ix = index(on_echo!(
        "p",
        "DENY",
        "[{to: [{operation: {notPorts: [8080]}}]}]"
    ));
    check(&ix, get("/"), DecisionReason::NoPolicies);
    check(&ix, get("/").port(9090), denied_by("default/p"));
}

#[test]
fn l7_header_conditions() {
    let ix = index(on_echo!(
        "no-admin-user",
        "DENY",
        r#"[{when: [{key: "request.headers[X-User]", values: ["admin", "root*"]}]}]"#
    ));
    let denied = denied_by("default/no-admin-user");
    check(&ix, get("/").header("x-user", "admin"), denied.clone());
    check(&ix, get("/").header("X-USER", "rootkit"), denied.clone());
    // Any of several values.
    check(
        &ix,
        get("/").header("x-user", "alice").header("x-user", "admin"),
        denied.clone(),
    );
    // Values are case-sensitive; an absent header does not match `values`.
    check(
        &ix,
        get("/").header("x-user", "Admin"),
        DecisionReason::NoPolicies,
    );
    check(&ix, get("/"), DecisionReason::NoPolicies);

    let ix = index(on_echo!(
        "not-blocked",
        "ALLOW",
        r#"[{when: [{key: "request.headers[x-client]", notValues: ["blocked"]}]}]"#
    ));
    let allowed = allowed_by("default/not-blocked");
    // An absent header matches `notValues`, as in Istio.
    check(&ix, get("/"), allowed.clone());
    check(&ix, get("/").header("x-client", "web"), allowed.clone());
    check(
        &ix,
        get("/").header("x-client", "blocked"),
        DecisionReason::NoAllowMatched,
    );
    check(
        &ix,
        get("/")
            .header("x-client", "web")
            .header("x-client", "blocked"),
        DecisionReason::NoAllowMatched,
    );

    let ix = index(on_echo!(
        "has-token",
        "ALLOW",
        r#"[{when: [{key: "request.headers[x-token]", values: ["*"]}]}]"#
    ));
    check(
        &ix,
        get("/").header("x-token", "t"),
        allowed_by("default/has-token"),
    );
    check(&ix, get("/"), DecisionReason::NoAllowMatched);
}

#[test]
fn l7_pseudo_header_conditions_read_the_request() {
    let ix = index(on_echo!(
        "pseudo",
        "ALLOW",
        r#"[{when: [{key: "request.headers[:method]", values: [GET]},
                    {key: "request.headers[:authority]", values: ["echo*"]},
                    {key: "request.headers[:path]", values: ["/api*"]}]}]"#
    ));
    check(&ix, get("/api/x"), allowed_by("default/pseudo"));
    check(&ix, get("/other"), DecisionReason::NoAllowMatched);
    check(
        &ix,
        get("/api/x").method("POST"),
        DecisionReason::NoAllowMatched,
    );
    check(
        &ix,
        get("/api/x").host("other"),
        DecisionReason::NoAllowMatched,
    );
    // A pseudo-header weft does not model fails closed.
    let ix = index(on_echo!(
        "scheme",
        "ALLOW",
        r#"[{when: [{key: "request.headers[:scheme]", values: [https]}]}]"#
    ));
    check(&ix, get("/"), DecisionReason::NoAllowMatched);
}

#[test]
fn l7_gateway_and_service_target_refs() {
    let ix = index(concat!(
        "- {name: on-waypoint, namespace: default, action: DENY, \
           targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], \
           rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n",
        "- {name: on-echo, namespace: default, action: ALLOW, \
           targetRefs: [{kind: Service, group: core, name: echo}], \
           rules: [{to: [{operation: {methods: [GET]}}]}]}\n",
        "- {name: on-other, namespace: default, action: DENY, \
           targetRefs: [{kind: Service, name: other}], rules: [{}]}\n",
        // Wrong group: not the waypoint's Gateway.
        "- {name: wrong-group, namespace: default, action: DENY, \
           targetRefs: [{kind: Gateway, group: example.com, name: waypoint}], rules: [{}]}\n",
    ));
    check(&ix, get("/"), allowed_by("default/on-echo"));
    check(&ix, get("/").method("POST"), DecisionReason::NoAllowMatched);
    // The waypoint's policy applies to every service it serves.
    check(
        &ix,
        get("/").method("DELETE"),
        denied_by("default/on-waypoint"),
    );
    check(
        &ix,
        get("/").method("DELETE").service("web"),
        denied_by("default/on-waypoint"),
    );
    // Another service's policies do not apply to echo, nor echo's to it.
    check(
        &ix,
        get("/").method("POST").service("web"),
        DecisionReason::NoPolicies,
    );
    check(
        &ix,
        get("/").service("other"),
        denied_by("default/on-other"),
    );
    // Another waypoint's requests do not see this waypoint's policy.
    check(
        &ix,
        get("/")
            .method("DELETE")
            .service("web")
            .waypoint("other-waypoint"),
        DecisionReason::NoPolicies,
    );
}

#[test]
fn l7_policy_on_service_and_gateway_is_evaluated_once() {
    let ix = index(concat!(
        "- {name: audit-both, namespace: default, action: AUDIT, \
           targetRefs: [{kind: Service, name: echo}, {kind: Service, name: echo}, \
             {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], rules: [{}]}\n",
        "- {name: audit-gw, namespace: default, action: AUDIT, \
           targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], \
           rules: [{}]}\n",
    ));
    let d = eval(&ix, &get("/"));
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoPolicies);
    let audited: Vec<&str> = d.audited.iter().map(|a| &**a).collect();
    assert_eq!(audited, ["default/audit-both", "default/audit-gw"]);
}

#[test]
fn l7_cross_namespace_target_ref_is_ignored() {
    let ix = index(concat!(
        // From `other`, naming default's echo: Istio refuses it; it must not apply.
        "- {name: foreign, namespace: other, action: DENY, \
           targetRefs: [{kind: Service, name: echo, namespace: default}], rules: [{}]}\n",
        // Naming its own namespace explicitly is fine.
        "- {name: explicit, namespace: default, action: DENY, \
           targetRefs: [{kind: Service, name: echo, namespace: default}], \
           rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n",
        // From default, naming another namespace: not attached there nor here.
        "- {name: outward, namespace: default, action: DENY, \
           targetRefs: [{kind: Service, name: echo, namespace: other}], rules: [{}]}\n",
    ));
    check(&ix, get("/"), DecisionReason::NoPolicies);
    check(
        &ix,
        get("/").method("DELETE"),
        denied_by("default/explicit"),
    );
    let conn = ConnectionInfo {
        source_principal: Some(SLEEP),
        source_namespace: Some("sleep"),
        source_ip: "10.0.1.5".parse().unwrap(),
        destination_ip: "10.96.0.10".parse().unwrap(),
        destination_port: 8080,
    };
    let headers = HeaderMap::new();
    let req = RequestInfo {
        method: "GET",
        path: "/",
        host: "echo",
        headers: &headers,
    };
    let d = ix.evaluate_waypoint("other", "echo", "waypoint", &conn, &req);
    assert_eq!(d.reason, DecisionReason::NoPolicies);
}

#[test]
fn l7_connection_attributes_still_apply_at_the_waypoint() {
    let ix = index(on_echo!(
        "sleep-reads",
        "ALLOW",
        r#"[{from: [{source: {principals: ["cluster.local/ns/sleep/sa/sleep"]}}],
             to: [{operation: {methods: [GET]}}]}]"#
    ));
    check(&ix, get("/"), allowed_by("default/sleep-reads"));
    check(
        &ix,
        get("/").peer("spiffe://cluster.local/ns/other/sa/x", "other"),
        DecisionReason::NoAllowMatched,
    );
    let plaintext = Req {
        principal: None,
        namespace: None,
        ..get("/")
    };
    check(&ix, plaintext, DecisionReason::NoAllowMatched);

    let ix = index(on_echo!(
        "ns",
        "DENY",
        r#"[{from: [{source: {notNamespaces: [sleep]}}],
             when: [{key: source.ip, values: ["10.0.0.0/16"]}]}]"#
    ));
    check(&ix, get("/"), DecisionReason::NoPolicies);
    check(
        &ix,
        get("/").peer("spiffe://cluster.local/ns/other/sa/x", "other"),
        denied_by("default/ns"),
    );
}

#[test]
fn l7_request_principals_are_unsupported_and_fail_closed() {
    // ALLOW naming request principals matches nothing.
    let ix = index(on_echo!(
        "jwt",
        "ALLOW",
        r#"[{from: [{source: {requestPrincipals: ["*"]}}]}]"#
    ));
    check(&ix, get("/"), DecisionReason::NoAllowMatched);
    let ix = index(on_echo!(
        "claims",
        "ALLOW",
        r#"[{when: [{key: "request.auth.claims[group]", values: [admins]}]}]"#
    ));
    check(&ix, get("/"), DecisionReason::NoAllowMatched);
    // ...but another rule of the same policy still works.
    let ix = index(on_echo!(
        "mixed",
        "ALLOW",
        r#"[{from: [{source: {requestPrincipals: ["*"]}}]}, {to: [{operation: {methods: [GET]}}]}]"#
    ));
    check(&ix, get("/"), allowed_by("default/mixed"));

    // DENY is enforced on the rest of the rule: wider, never narrower.
    let ix = index(on_echo!(
        "no-anon-delete",
        "DENY",
        r#"[{from: [{source: {notRequestPrincipals: ["*"]}}], to: [{operation: {methods: [DELETE]}}]}]"#
    ));
    check(
        &ix,
        get("/").method("DELETE"),
        denied_by("default/no-anon-delete"),
    );
    check(&ix, get("/"), DecisionReason::NoPolicies);
    let ix = index(on_echo!(
        "no-aud",
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin*"]}}],
             when: [{key: request.auth.audiences, notValues: [weft]}]}]"#
    ));
    check(&ix, get("/admin"), denied_by("default/no-aud"));
    check(&ix, get("/"), DecisionReason::NoPolicies);
}

#[test]
fn l7_invalid_patterns_fail_closed() {
    // Validation only checks that L7 values are non-empty; a mid-string wildcard (or an Istio
    // path template) does not compile, so its rule fails closed.
    let ix = index(on_echo!(
        "tmpl",
        "ALLOW",
        r#"[{to: [{operation: {paths: ["/a/{*}/b"]}}]}]"#
    ));
    check(&ix, get("/a/x/b"), DecisionReason::NoAllowMatched);
    let ix = index(on_echo!(
        "tmpl",
        "DENY",
        r#"[{to: [{operation: {paths: ["/a/*/b"]}}]}]"#
    ));
    check(&ix, get("/public"), denied_by("default/tmpl"));
    let ix = index(on_echo!(
        "bad-header",
        "DENY",
        r#"[{when: [{key: "request.headers[bad header]", values: [x]}]}]"#
    ));
    check(&ix, get("/"), denied_by("default/bad-header"));
}

#[test]
fn l7_decision_order_matches_the_node() {
    let ix = index(concat!(
        on_echo!("allow-all", "ALLOW", "[{}]"),
        on_echo!(
            "deny-delete",
            "DENY",
            "[{to: [{operation: {methods: [DELETE]}}]}]"
        ),
        on_echo!(
            "audit-post",
            "AUDIT",
            "[{to: [{operation: {methods: [POST]}}]}]"
        ),
    ));
    check(&ix, get("/"), allowed_by("default/allow-all"));
    check(
        &ix,
        get("/").method("DELETE"),
        denied_by("default/deny-delete"),
    );
    let d = eval(&ix, &get("/").method("POST"));
    assert!(d.allowed);
    assert_eq!(
        d.audited,
        vec![std::sync::Arc::<str>::from("default/audit-post")]
    );
    // ALLOW with no rules denies everything; DENY with no rules denies nothing.
    let ix = index(concat!(
        on_echo!("nothing", "ALLOW", "[]"),
        on_echo!("d", "DENY", "[]")
    ));
    check(&ix, get("/"), DecisionReason::NoAllowMatched);
    check(&ix, get("/").service("web"), DecisionReason::NoPolicies);
}

#[test]
fn l7_node_still_skips_every_waypoint_policy() {
    let ix = index(concat!(
        on_echo!("deny-all", "DENY", "[{}]"),
        "- {name: gw-deny, namespace: default, action: DENY, \
           targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], \
           rules: [{}]}\n",
        "- {name: root-wp, namespace: weft-system, action: ALLOW, \
           targetRefs: [{kind: Service, name: echo}], rules: []}\n",
    ));
    let labels = std::collections::BTreeMap::new();
    let workload = WorkloadRef {
        namespace: "default",
        labels: &labels,
    };
    let conn = ConnectionInfo {
        source_principal: Some(SLEEP),
        source_namespace: Some("sleep"),
        source_ip: "10.0.1.5".parse().unwrap(),
        destination_ip: "10.0.2.7".parse().unwrap(),
        destination_port: 8080,
    };
    let d = ix.evaluate(&workload, &conn);
    assert_eq!(d.reason, DecisionReason::NoPolicies);
    assert!(d.allowed);
    // The waypoint does enforce them.
    check(&ix, get("/"), denied_by("default/deny-all"));
    // `attached_to` keeps listing Service attachments.
    let names: Vec<&str> = ix
        .attached_to("default", "echo")
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["deny-all"]);
}

/// TCP through a waypoint: the attached policies with the node's view of HTTP attributes.
#[test]
fn tcp_at_the_waypoint_sees_the_l4_part_of_attached_policies() {
    let conn = |principal: &'static str, namespace: &'static str| ConnectionInfo {
        source_principal: Some(principal),
        source_namespace: Some(namespace),
        source_ip: "10.0.1.5".parse::<IpAddr>().unwrap(),
        destination_ip: "10.96.0.10".parse::<IpAddr>().unwrap(),
        destination_port: 8080,
    };
    let other = "spiffe://cluster.local/ns/other/sa/x";
    // An ALLOW rule naming methods matches no TCP connection: nothing is allowed.
    let ix = index(on_echo!(
        "reads",
        "ALLOW",
        r#"[{to: [{operation: {methods: [GET]}}]}]"#
    ));
    let d = ix.evaluate_waypoint_tcp("default", "echo", "waypoint", &conn(SLEEP, "sleep"));
    assert_eq!(d.reason, DecisionReason::NoAllowMatched);
    // A DENY rule is enforced on its L4 part: wider than meant, never narrower.
    let ix = index(on_echo!(
        "no-delete-from-other",
        "DENY",
        r#"[{from: [{source: {namespaces: [other]}}], to: [{operation: {methods: [DELETE]}}]}]"#
    ));
    let d = ix.evaluate_waypoint_tcp("default", "echo", "waypoint", &conn(other, "other"));
    assert_eq!(d.reason, denied_by("default/no-delete-from-other"));
    let d = ix.evaluate_waypoint_tcp("default", "echo", "waypoint", &conn(SLEEP, "sleep"));
    assert!(d.allowed, "{d}");
    // Plain L4 policies apply as written; another service's do not.
    let ix = index(on_echo!(
        "only-sleep",
        "ALLOW",
        r#"[{from: [{source: {principals: ["cluster.local/ns/sleep/sa/sleep"]}}]}]"#
    ));
    assert!(
        ix.evaluate_waypoint_tcp("default", "echo", "waypoint", &conn(SLEEP, "sleep"))
            .allowed
    );
    assert!(
        !ix.evaluate_waypoint_tcp("default", "echo", "waypoint", &conn(other, "other"))
            .allowed
    );
    assert!(
        ix.evaluate_waypoint_tcp("default", "web", "waypoint", &conn(other, "other"))
            .allowed
    );
}
