//! The authorization matrix: each case is a policy set (YAML), a destination workload, a
//! connection, and the decision Istio would reach at L4.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::model::policy::AuthorizationPolicy;

const ROOT: &str = "weft-system";
const SLEEP: &str = "spiffe://cluster.local/ns/sleep/sa/sleep";

/// Expected outcome; `Allowed`/`Denied` name the deciding policy.
#[derive(Debug, Clone, Copy)]
enum Want {
    NoPolicies,
    Allowed(&'static str),
    Denied(&'static str),
    NoAllowMatched,
}

struct Case {
    name: &'static str,
    policies: &'static str,
    principal: Option<&'static str>,
    namespace: Option<&'static str>,
    source_ip: &'static str,
    destination_ip: &'static str,
    port: u16,
    workload_ns: &'static str,
    labels: &'static [(&'static str, &'static str)],
    want: Want,
    audited: &'static [&'static str],
}

/// A case with the default connection: `sleep` (mTLS) from 10.0.1.5 to `echo` in `default`,
/// 10.0.2.7:8080.
fn case(name: &'static str, policies: &'static str, want: Want) -> Case {
    Case {
        name,
        policies,
        principal: Some(SLEEP),
        namespace: Some("sleep"),
        source_ip: "10.0.1.5",
        destination_ip: "10.0.2.7",
        port: 8080,
        workload_ns: "default",
        labels: &[("app", "echo"), ("version", "v1")],
        want,
        audited: &[],
    }
}

impl Case {
    fn plaintext(mut self) -> Self {
        self.principal = None;
        self.namespace = None;
        self
    }
    fn peer(mut self, principal: &'static str, namespace: &'static str) -> Self {
        self.principal = Some(principal);
        self.namespace = Some(namespace);
        self
    }
    fn src(mut self, ip: &'static str) -> Self {
        self.source_ip = ip;
        self
    }
    fn dst(mut self, ip: &'static str) -> Self {
        self.destination_ip = ip;
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    fn workload(
        mut self,
        ns: &'static str,
        labels: &'static [(&'static str, &'static str)],
    ) -> Self {
        self.workload_ns = ns;
        self.labels = labels;
        self
    }
    fn audited(mut self, audited: &'static [&'static str]) -> Self {
        self.audited = audited;
        self
    }

    fn run(&self) -> Result<(), String> {
        let policies: Vec<AuthorizationPolicy> = serde_yaml_ng::from_str(self.policies)
            .map_err(|e| format!("policies do not parse: {e}"))?;
        let index = PolicyIndex::new(policies, ROOT);
        let labels: BTreeMap<String, String> = self
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let workload = WorkloadRef {
            namespace: self.workload_ns,
            labels: &labels,
        };
        let ip = |s: &str| s.parse::<IpAddr>().map_err(|e| format!("{s}: {e}"));
        let conn = ConnectionInfo {
            source_principal: self.principal,
            source_namespace: self.namespace,
            source_ip: ip(self.source_ip)?,
            destination_ip: ip(self.destination_ip)?,
            destination_port: self.port,
        };
        let got = index.evaluate(&workload, &conn);
        let want_reason = match self.want {
            Want::NoPolicies => DecisionReason::NoPolicies,
            Want::Allowed(p) => DecisionReason::AllowedBy { policy: p.into() },
            Want::Denied(p) => DecisionReason::DeniedBy { policy: p.into() },
            Want::NoAllowMatched => DecisionReason::NoAllowMatched,
        };
        let want_allowed = matches!(self.want, Want::NoPolicies | Want::Allowed(_));
        let audited: Vec<&str> = got.audited.iter().map(|a| &**a).collect();
        if got.reason != want_reason || got.allowed != want_allowed || audited != self.audited {
            return Err(format!(
                "got `{got}`, want {:?} audited {:?}",
                self.want, self.audited
            ));
        }
        Ok(())
    }
}

use Want::*;

/// Wraps single-policy YAML bodies: `p("ALLOW", "rules: [{}]")`.
macro_rules! policy {
    ($name:literal, $action:literal, $body:literal) => {
        concat!(
            "- {name: ",
            $name,
            ", namespace: default, action: ",
            $action,
            ", ",
            $body,
            "}\n"
        )
    };
}

fn matrix() -> Vec<Case> {
    vec![
        // Decision order.
        case("no policies allow", "[]", NoPolicies),
        case(
            "deny wins over allow",
            concat!(
                policy!("allow-all", "ALLOW", "rules: [{}]"),
                policy!(
                    "deny-sleep",
                    "DENY",
                    "rules: [{from: [{source: {namespaces: [sleep]}}]}]"
                ),
            ),
            Denied("default/deny-sleep"),
        ),
        case(
            "non-matching deny falls through to no policies",
            policy!(
                "deny-other",
                "DENY",
                "rules: [{from: [{source: {namespaces: [other]}}]}]"
            ),
            NoPolicies,
        ),
        case(
            "allow present but not matching denies",
            policy!(
                "allow-other",
                "ALLOW",
                "rules: [{from: [{source: {namespaces: [other]}}]}]"
            ),
            NoAllowMatched,
        ),
        case(
            "allow with no rules denies all",
            policy!("allow-nothing", "ALLOW", "rules: []"),
            NoAllowMatched,
        ),
        case(
            "allow without rules key denies all",
            "[{name: a, namespace: default}]",
            NoAllowMatched,
        ),
        case(
            "deny with no rules denies nothing",
            policy!("d", "DENY", "rules: []"),
            NoPolicies,
        ),
        case(
            "allow rules [{}] allows all",
            policy!("allow-all", "ALLOW", "rules: [{}]"),
            Allowed("default/allow-all"),
        ),
        case(
            "deny rules [{}] denies all",
            policy!("deny-all", "DENY", "rules: [{}]"),
            Denied("default/deny-all"),
        ),
        case(
            "second allow policy matches",
            concat!(
                policy!(
                    "a1",
                    "ALLOW",
                    "rules: [{from: [{source: {namespaces: [other]}}]}]"
                ),
                policy!(
                    "a2",
                    "ALLOW",
                    "rules: [{to: [{operation: {ports: [8080]}}]}]"
                ),
            ),
            Allowed("default/a2"),
        ),
        // Principals.
        case(
            "principal exact",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["cluster.local/ns/sleep/sa/sleep"]}}]}]"#
            ),
            Allowed("default/p"),
        ),
        case(
            "principal exact other",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["cluster.local/ns/sleep/sa/other"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "principal written with scheme",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["spiffe://cluster.local/ns/sleep/sa/sleep"]}}]}]"#
            ),
            Allowed("default/p"),
        ),
        case(
            "principal prefix",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["cluster.local/ns/sleep/*"]}}]}]"#
            ),
            Allowed("default/p"),
        ),
        case(
            "principal prefix other",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["cluster.local/ns/foo/*"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "principal suffix",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["*/sa/sleep"]}}]}]"#
            ),
            Allowed("default/p"),
        ),
        case(
            "principal any authenticated",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["*"]}}]}]"#
            ),
            Allowed("default/p"),
        ),
        case(
            "principal any rejects plaintext",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["*"]}}]}]"#
            ),
            NoAllowMatched,
        )
        .plaintext(),
        case(
            "principal exact rejects plaintext",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {principals: ["cluster.local/ns/sleep/sa/sleep"]}}]}]"#
            ),
            NoAllowMatched,
        )
        .plaintext(),
        case(
            "notPrincipals excludes",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {notPrincipals: ["*/sa/sleep"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "notPrincipals admits others",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {notPrincipals: ["*/sa/sleep"]}}]}]"#
            ),
            Allowed("default/p"),
        )
        .peer("spiffe://cluster.local/ns/sleep/sa/curl", "sleep"),
        case(
            "notPrincipals admits plaintext",
            policy!(
                "p",
                "ALLOW",
                r#"rules: [{from: [{source: {notPrincipals: ["*/sa/sleep"]}}]}]"#
            ),
            Allowed("default/p"),
        )
        .plaintext(),
        case(
            "deny notPrincipals * denies plaintext",
            policy!(
                "d",
                "DENY",
                r#"rules: [{from: [{source: {notPrincipals: ["*"]}}]}]"#
            ),
            Denied("default/d"),
        )
        .plaintext(),
        case(
            "deny notPrincipals * passes mTLS",
            policy!(
                "d",
                "DENY",
                r#"rules: [{from: [{source: {notPrincipals: ["*"]}}]}]"#
            ),
            NoPolicies,
        ),
        // Namespaces.
        case(
            "namespaces match",
            policy!(
                "n",
                "ALLOW",
                "rules: [{from: [{source: {namespaces: [sleep, foo]}}]}]"
            ),
            Allowed("default/n"),
        ),
        case(
            "namespaces other",
            policy!(
                "n",
                "ALLOW",
                "rules: [{from: [{source: {namespaces: [foo]}}]}]"
            ),
            NoAllowMatched,
        ),
        case(
            "namespaces prefix",
            policy!(
                "n",
                "ALLOW",
                r#"rules: [{from: [{source: {namespaces: ["sl*"]}}]}]"#
            ),
            Allowed("default/n"),
        ),
        case(
            "namespaces rejects plaintext",
            policy!(
                "n",
                "ALLOW",
                r#"rules: [{from: [{source: {namespaces: ["*"]}}]}]"#
            ),
            NoAllowMatched,
        )
        .plaintext(),
        case(
            "notNamespaces excludes",
            policy!(
                "n",
                "ALLOW",
                "rules: [{from: [{source: {notNamespaces: [sleep]}}]}]"
            ),
            NoAllowMatched,
        ),
        case(
            "notNamespaces admits others",
            policy!(
                "n",
                "ALLOW",
                "rules: [{from: [{source: {notNamespaces: [foo]}}]}]"
            ),
            Allowed("default/n"),
        ),
        // IP blocks.
        case(
            "ipBlocks v4 cidr",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["10.0.1.0/24"]}}]}]"#
            ),
            Allowed("default/i"),
        ),
        case(
            "ipBlocks v4 cidr other",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["10.0.9.0/24"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "ipBlocks plain ip",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["10.0.1.5"]}}]}]"#
            ),
            Allowed("default/i"),
        ),
        case(
            "ipBlocks plain ip other",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["10.0.1.6"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "ipBlocks v6 cidr",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["fd00:1::/64"]}}]}]"#
            ),
            Allowed("default/i"),
        )
        .src("fd00:1::5")
        .dst("fd00:2::7"),
        case(
            "ipBlocks v6 cidr vs v4 peer",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["fd00:1::/64"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "ipBlocks v4 vs v4-mapped peer",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]"#
            ),
            Allowed("default/i"),
        )
        .src("::ffff:10.0.1.5"),
        case(
            "ipBlocks v4-mapped cidr vs v4 peer",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["::ffff:10.0.0.0/104"]}}]}]"#
            ),
            Allowed("default/i"),
        ),
        case(
            "ipBlocks and remoteIpBlocks both required",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"], remoteIpBlocks: ["10.9.0.0/16"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "remoteIpBlocks match peer",
            policy!(
                "i",
                "ALLOW",
                r#"rules: [{from: [{source: {remoteIpBlocks: ["10.0.0.0/16"]}}]}]"#
            ),
            Allowed("default/i"),
        ),
        case(
            "deny notIpBlocks spares inside",
            policy!(
                "d",
                "DENY",
                r#"rules: [{from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]}]"#
            ),
            NoPolicies,
        ),
        case(
            "deny notIpBlocks denies outside",
            policy!(
                "d",
                "DENY",
                r#"rules: [{from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]}]"#
            ),
            Denied("default/d"),
        )
        .src("192.168.1.9"),
        case(
            "deny notRemoteIpBlocks denies outside",
            policy!(
                "d",
                "DENY",
                r#"rules: [{from: [{source: {notRemoteIpBlocks: ["10.0.0.0/8"]}}]}]"#
            ),
            Denied("default/d"),
        )
        .src("192.168.1.9"),
        // Ports.
        case(
            "ports match string",
            policy!(
                "o",
                "ALLOW",
                r#"rules: [{to: [{operation: {ports: ["8080"]}}]}]"#
            ),
            Allowed("default/o"),
        ),
        case(
            "ports match number",
            policy!(
                "o",
                "ALLOW",
                "rules: [{to: [{operation: {ports: [9090, 8080]}}]}]"
            ),
            Allowed("default/o"),
        ),
        case(
            "ports other",
            policy!(
                "o",
                "ALLOW",
                r#"rules: [{to: [{operation: {ports: ["8080"]}}]}]"#
            ),
            NoAllowMatched,
        )
        .port(9090),
        case(
            "notPorts excludes",
            policy!(
                "o",
                "ALLOW",
                r#"rules: [{to: [{operation: {notPorts: ["8080"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "notPorts admits others",
            policy!(
                "o",
                "ALLOW",
                r#"rules: [{to: [{operation: {notPorts: ["8080"]}}]}]"#
            ),
            Allowed("default/o"),
        )
        .port(9090),
        // Rule structure.
        case(
            "from entries are ORed",
            policy!(
                "r",
                "ALLOW",
                "rules: [{from: [{source: {namespaces: [foo]}}, {source: {namespaces: [sleep]}}]}]"
            ),
            Allowed("default/r"),
        ),
        case(
            "source fields are ANDed",
            policy!(
                "r",
                "ALLOW",
                r#"rules: [{from: [{source: {namespaces: [sleep], ipBlocks: ["10.9.0.0/16"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "from and to are ANDed",
            policy!(
                "r",
                "ALLOW",
                "rules: [{from: [{source: {namespaces: [sleep]}}], to: [{operation: {ports: [9090]}}]}]"
            ),
            NoAllowMatched,
        ),
        case(
            "rules are ORed",
            policy!(
                "r",
                "ALLOW",
                "rules: [{to: [{operation: {ports: [9090]}}]}, {from: [{source: {namespaces: [sleep]}}]}]"
            ),
            Allowed("default/r"),
        ),
        // `when` on L4 keys.
        case(
            "when source.ip",
            policy!(
                "w",
                "ALLOW",
                r#"rules: [{when: [{key: source.ip, values: ["10.0.1.0/24"]}]}]"#
            ),
            Allowed("default/w"),
        ),
        case(
            "when remote.ip",
            policy!(
                "w",
                "ALLOW",
                r#"rules: [{when: [{key: remote.ip, values: ["10.0.2.0/24"]}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "when source.namespace",
            policy!(
                "w",
                "ALLOW",
                "rules: [{when: [{key: source.namespace, values: [sleep]}]}]"
            ),
            Allowed("default/w"),
        ),
        case(
            "when source.principal",
            policy!(
                "w",
                "ALLOW",
                r#"rules: [{when: [{key: source.principal, values: ["*/sa/sleep"]}]}]"#
            ),
            Allowed("default/w"),
        ),
        case(
            "when destination.port",
            policy!(
                "w",
                "ALLOW",
                "rules: [{when: [{key: destination.port, values: [8080]}]}]"
            ),
            Allowed("default/w"),
        ),
        case(
            "when destination.ip",
            policy!(
                "w",
                "ALLOW",
                r#"rules: [{when: [{key: destination.ip, values: ["10.0.2.7"]}]}]"#
            ),
            Allowed("default/w"),
        ),
        case(
            "when notValues",
            policy!(
                "w",
                "ALLOW",
                r#"rules: [{when: [{key: destination.port, notValues: ["8080"]}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "when conditions are ANDed",
            policy!(
                "w",
                "ALLOW",
                r#"rules: [{when: [{key: destination.port, values: ["8080"]}, {key: source.namespace, values: [foo]}]}]"#
            ),
            NoAllowMatched,
        ),
        // Scope.
        case(
            "selector matching labels",
            policy!(
                "s",
                "ALLOW",
                "selector: {matchLabels: {app: echo}}, rules: []"
            ),
            NoAllowMatched,
        ),
        case(
            "selector non-matching labels",
            policy!(
                "s",
                "ALLOW",
                "selector: {matchLabels: {app: other}}, rules: []"
            ),
            NoPolicies,
        ),
        case(
            "selector needs every label",
            policy!(
                "s",
                "DENY",
                "selector: {matchLabels: {app: echo, version: v2}}, rules: [{}]"
            ),
            NoPolicies,
        ),
        case(
            "namespace scope other namespace",
            "[{name: a, namespace: other, rules: []}]",
            NoPolicies,
        ),
        case(
            "namespace scope own namespace",
            "[{name: a, namespace: other, rules: []}]",
            NoAllowMatched,
        )
        .workload("other", &[]),
        case(
            "root namespace is mesh-wide",
            "[{name: deny-all, namespace: weft-system, action: DENY, rules: [{}]}]",
            Denied("weft-system/deny-all"),
        ),
        case(
            "root namespace covers its own workloads",
            "[{name: allow-none, namespace: weft-system}]",
            NoAllowMatched,
        )
        .workload(ROOT, &[]),
        case(
            "root selector applies in every namespace",
            "[{name: s, namespace: weft-system, action: DENY, selector: {matchLabels: {app: echo}}, rules: [{}]}]",
            Denied("weft-system/s"),
        ),
        case(
            "root selector still selects",
            "[{name: s, namespace: weft-system, action: DENY, selector: {matchLabels: {app: db}}, rules: [{}]}]",
            NoPolicies,
        ),
        case(
            "root allow plus namespace allow",
            "[{name: r, namespace: weft-system, rules: [{from: [{source: {namespaces: [foo]}}]}]},
              {name: n, namespace: default, rules: [{from: [{source: {namespaces: [sleep]}}]}]}]",
            Allowed("default/n"),
        ),
        case(
            "targetRefs policy not applied at L4",
            "[{name: wp, namespace: default, targetRefs: [{kind: Service, group: '', name: echo}], action: DENY, rules: [{}]}]",
            NoPolicies,
        ),
        // L7 attributes.
        case(
            "allow with methods matches nothing",
            policy!(
                "l7",
                "ALLOW",
                "rules: [{to: [{operation: {methods: [GET]}}]}]"
            ),
            NoAllowMatched,
        ),
        case(
            "allow with requestPrincipals matches nothing",
            policy!(
                "l7",
                "ALLOW",
                r#"rules: [{from: [{source: {namespaces: [sleep], requestPrincipals: ["*"]}}]}]"#
            ),
            NoAllowMatched,
        ),
        case(
            "allow with header condition matches nothing",
            policy!(
                "l7",
                "ALLOW",
                "rules: [{when: [{key: 'request.headers[x-user]', values: [a]}]}]"
            ),
            NoAllowMatched,
        ),
        case(
            "allow L7 rule does not spoil L4 rule",
            policy!(
                "l7",
                "ALLOW",
                "rules: [{to: [{operation: {paths: [/x]}}]}, {from: [{source: {namespaces: [sleep]}}]}]"
            ),
            Allowed("default/l7"),
        ),
        case(
            "deny with paths denies at L4",
            policy!(
                "l7",
                "DENY",
                "rules: [{to: [{operation: {paths: [/admin]}}]}]"
            ),
            Denied("default/l7"),
        ),
        case(
            "deny with paths keeps its L4 part",
            policy!(
                "l7",
                "DENY",
                "rules: [{to: [{operation: {ports: [9090], paths: [/admin]}}]}]"
            ),
            NoPolicies,
        ),
        case(
            "deny with header condition keeps L4 conditions",
            policy!(
                "l7",
                "DENY",
                "rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}, {key: destination.port, values: [8080]}]}]"
            ),
            Denied("default/l7"),
        ),
        case(
            "deny with notRequestPrincipals denies at L4",
            policy!(
                "l7",
                "DENY",
                r#"rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]"#
            ),
            Denied("default/l7"),
        ),
        // AUDIT.
        case(
            "audit reported, not deciding",
            policy!("au", "AUDIT", "rules: [{}]"),
            NoPolicies,
        )
        .audited(&["default/au"]),
        case(
            "audit reported alongside deny",
            concat!(
                policy!("au", "AUDIT", "rules: [{}]"),
                policy!("d", "DENY", "rules: [{}]")
            ),
            Denied("default/d"),
        )
        .audited(&["default/au"]),
        case(
            "audit reported alongside allow",
            concat!(
                policy!("au", "AUDIT", "rules: [{}]"),
                policy!("a", "ALLOW", "rules: [{}]")
            ),
            Allowed("default/a"),
        )
        .audited(&["default/au"]),
        case(
            "audit not matching not reported",
            policy!(
                "au",
                "AUDIT",
                "rules: [{from: [{source: {namespaces: [foo]}}]}]"
            ),
            NoPolicies,
        ),
        case(
            "audit with L7 never matches",
            policy!(
                "au",
                "AUDIT",
                "rules: [{to: [{operation: {methods: [GET]}}]}]"
            ),
            NoPolicies,
        ),
        case(
            "audit does not make allow apply",
            policy!("au", "AUDIT", "rules: []"),
            NoPolicies,
        ),
        // Policies that skipped validation fail closed.
        case(
            "invalid deny rule denies",
            policy!(
                "d",
                "DENY",
                r#"rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]"#
            ),
            Denied("default/d"),
        ),
        case(
            "invalid allow rule allows nothing",
            policy!(
                "a",
                "ALLOW",
                r#"rules: [{to: [{operation: {ports: ["0"]}}]}, {from: [{source: {namespaces: [foo]}}]}]"#
            ),
            NoAllowMatched,
        ),
    ]
}

#[test]
fn authz_matrix() {
    let failures: Vec<String> = matrix()
        .iter()
        .filter_map(|c| c.run().err().map(|e| format!("{}: {e}", c.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn authz_matrix_names_are_unique() {
    let cases = matrix();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len());
}

#[test]
fn authz_index_lists_every_policy() {
    let policies: Vec<AuthorizationPolicy> = serde_yaml_ng::from_str(
        "[{name: a, namespace: default}, {name: wp, namespace: default, targetRefs: [{kind: Service, name: echo}]}]",
    )
    .unwrap();
    let index = PolicyIndex::new(policies.clone(), ROOT);
    assert_eq!(index.policies(), &policies[..]);
    assert_eq!(index.root_namespace(), ROOT);
}

#[test]
fn authz_decision_display() {
    let d = Decision::new(
        DecisionReason::DeniedBy {
            policy: "default/deny".into(),
        },
        vec!["default/a1".into(), "default/a2".into()],
    );
    assert!(!d.allowed);
    assert_eq!(
        d.to_string(),
        "deny: denied by policy default/deny (audited by default/a1, default/a2)"
    );
    let d = Decision::new(DecisionReason::NoPolicies, Vec::new());
    assert!(d.allowed);
    assert_eq!(d.to_string(), "allow: no ALLOW policy applies");
}
