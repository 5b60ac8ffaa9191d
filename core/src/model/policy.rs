//! Istio's `AuthorizationPolicy`, flattened (`name`/`namespace` next to the spec fields) so that
//! users can bring the policies they already run under Istio.
//!
//! The shape keeps what the user wrote (strings, not parsed CIDRs or ports) so that config dumps
//! echo the input and [`AuthorizationPolicy::validate`] can report every bad value with its field
//! path instead of stopping at the first. The typed parsers below ([`parse_ip_block`],
//! [`parse_port`], [`StringPattern::parse`], [`ConditionKey::parse`]) are shared by validation
//! and by `authz`, which compiles validated policies into matchers once per reload.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// One authorization policy. Unknown keys are refused so a typo (`notPrincipal`) is an error
/// rather than a rule that silently matches more than intended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    /// Which workloads of `namespace` the policy applies to; absent means all of them (all of the
    /// mesh when `namespace` is the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Services or gateways the policy is attached to. Such policies are enforced by waypoints,
    /// never by the node's L4 authorization (see [`AuthorizationPolicy::is_waypoint_policy`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default)]
    pub action: Action,
    /// Absent or empty matches nothing: an ALLOW policy without rules denies everything in its
    /// scope, a DENY policy without rules denies nothing (Istio's semantics).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Label selector; only `matchLabels`, like Istio's `WorkloadSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Every selector label present on the workload with the same value. An empty selector
    /// selects everything, as in Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// Istio's `PolicyTargetReference`. Kept so policies written for waypoints load unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What a matching rule does. `CUSTOM` (external authorization) is refused at load time with an
/// explicit message, since weft has no extension providers and ignoring it would fail open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Matches are reported for logging; they never change the decision.
    Audit,
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const VARIANTS: &[&str] = &["ALLOW", "DENY", "AUDIT"];
        let s = String::deserialize(d)?;
        match s.as_str() {
            "ALLOW" => Ok(Action::Allow),
            "DENY" => Ok(Action::Deny),
            "AUDIT" => Ok(Action::Audit),
            "CUSTOM" => Err(de::Error::custom(
                "action CUSTOM (external authorization) is not supported by weft; \
                 use ALLOW, DENY or AUDIT",
            )),
            other => Err(de::Error::unknown_variant(other, VARIANTS)),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        })
    }
}

/// One rule: `from` (any entry) AND `to` (any entry) AND every `when` condition. `rules: [{}]`
/// therefore matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// One entry of a rule's `from` list (Istio's `Rule.From`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// Optional only so that a missing `source` is reported by `validate` with its path.
    #[serde(default)]
    pub source: Option<Source>,
}

/// One entry of a rule's `to` list (Istio's `Rule.To`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// Optional only so that a missing `operation` is reported by `validate` with its path.
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// Who the peer is. Every non-empty field must match; within a field any value may match; a
/// `not*` field must not match. An empty list is the same as an absent one (as in Istio's proto).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// At L4 there is no X-Forwarded-For, so remote IP blocks match the peer address too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    /// L7 (JWT): see [`Source::has_l7`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
}

impl Source {
    /// Whether the source names something only visible in HTTP, which the node cannot check.
    pub fn has_l7(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }

    fn is_empty(&self) -> bool {
        *self == Source::default()
    }
}

/// What the peer asks for. Same AND/OR/not rules as [`Source`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Scalar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Scalar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

impl Operation {
    /// Whether the operation names something only visible in HTTP (hosts, methods, paths).
    pub fn has_l7(&self) -> bool {
        [
            &self.hosts,
            &self.not_hosts,
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
        ]
        .iter()
        .any(|v| !v.is_empty())
    }

    fn is_empty(&self) -> bool {
        *self == Operation::default()
    }
}

/// A `when` condition: the key's value must be one of `values` (if any) and none of `notValues`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Scalar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<Scalar>,
}

/// A YAML scalar kept as text. Istio writes ports and condition values as strings, but people
/// write `ports: [8080]`; accepting both avoids an error that helps nobody.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scalar(pub String);

impl Scalar {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Scalar {
    fn from(s: &str) -> Self {
        Scalar(s.to_owned())
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl AuthorizationPolicy {
    /// `namespace/name`, how policies are named in decisions, logs and metrics.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Policies attached with `targetRefs` govern traffic through a waypoint (they may use L7
    /// fields the node cannot see, and their scope is a service, not the destination pod), so
    /// the node's L4 authorization skips them entirely.
    pub fn is_waypoint_policy(&self) -> bool {
        !self.target_refs.is_empty()
    }

    /// Everything wrong with the policy, each with a path relative to the policy
    /// (`rules[0].from[1].source.ipBlocks[2]`), so the loader can report all errors at once.
    pub fn validate(&self) -> Vec<ValidationError> {
        let mut v = Validator::default();
        if self.name.is_empty() {
            v.err("name", "must not be empty");
        }
        if self.namespace.is_empty() {
            v.err("namespace", "must not be empty");
        }
        if self.selector.is_some() && !self.target_refs.is_empty() {
            v.err(
                "targetRefs",
                "selector and targetRefs are mutually exclusive",
            );
        }
        for (i, t) in self.target_refs.iter().enumerate() {
            if !TARGET_KINDS.contains(&t.kind.as_str()) {
                let msg = format!(
                    "kind {:?} is not one of {}",
                    t.kind,
                    TARGET_KINDS.join(", ")
                );
                v.err(format!("targetRefs[{i}].kind"), msg);
            }
            if t.name.is_empty() {
                v.err(format!("targetRefs[{i}].name"), "must not be empty");
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            v.rule(&format!("rules[{i}]"), rule);
        }
        v.0
    }
}

/// Kinds Istio accepts in `targetRefs`.
const TARGET_KINDS: &[&str] = &["Service", "ServiceEntry", "Gateway", "GatewayClass"];

/// A problem in one field of a policy. `path` is relative to the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Validator(Vec<ValidationError>);

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn rule(&mut self, at: &str, rule: &Rule) {
        for (j, f) in rule.from.iter().enumerate() {
            let at = format!("{at}.from[{j}].source");
            match &f.source {
                None => self.err(at, "must be set"),
                Some(s) if s.is_empty() => self.err(at, "must set at least one field"),
                Some(s) => self.source(&at, s),
            }
        }
        for (j, t) in rule.to.iter().enumerate() {
            let at = format!("{at}.to[{j}].operation");
            match &t.operation {
                None => self.err(at, "must be set"),
                Some(o) if o.is_empty() => self.err(at, "must set at least one field"),
                Some(o) => self.operation(&at, o),
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            self.condition(&format!("{at}.when[{j}]"), c);
        }
    }

    fn source(&mut self, at: &str, s: &Source) {
        let patterns = [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ];
        for (field, values) in patterns {
            self.each(at, field, values, |v| StringPattern::parse(v).map(drop));
        }
        let ips = [
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ];
        for (field, values) in ips {
            self.each(at, field, values, |v| parse_ip_block(v).map(drop));
        }
    }

    fn operation(&mut self, at: &str, o: &Operation) {
        self.each(at, "ports", &o.ports, |v| parse_port(v.as_str()).map(drop));
        self.each(at, "notPorts", &o.not_ports, |v| {
            parse_port(v.as_str()).map(drop)
        });
        let l7 = [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ];
        for (field, values) in l7 {
            self.each(at, field, values, |v| {
                if v.is_empty() {
                    Err(ValueError::Empty)
                } else {
                    Ok(())
                }
            });
        }
    }

    fn condition(&mut self, at: &str, c: &Condition) {
        let key = match ConditionKey::parse(&c.key) {
            Ok(k) => k,
            Err(e) => return self.err(format!("{at}.key"), e.to_string()),
        };
        if c.values.is_empty() && c.not_values.is_empty() {
            self.err(at, "must set values or notValues");
        }
        let check = |v: &Scalar| -> Result<(), ValueError> {
            match key {
                ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                    parse_ip_block(v.as_str()).map(drop)
                }
                ConditionKey::DestinationPort => parse_port(v.as_str()).map(drop),
                ConditionKey::SourcePrincipal | ConditionKey::SourceNamespace => {
                    StringPattern::parse(v.as_str()).map(drop)
                }
                ConditionKey::L7 => Ok(()),
            }
        };
        self.each(at, "values", &c.values, check);
        self.each(at, "notValues", &c.not_values, check);
    }

    fn each<T>(
        &mut self,
        at: &str,
        field: &str,
        values: &[T],
        check: impl Fn(&T) -> Result<(), ValueError>,
    ) {
        for (k, value) in values.iter().enumerate() {
            if let Err(e) = check(value) {
                self.err(format!("{at}.{field}[{k}]"), e.to_string());
            }
        }
    }
}

/// Why one value in a policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is neither an IP address nor a CIDR block")]
    IpBlock(String),
    #[error("{0:?} is not a port between 1 and 65535")]
    Port(String),
    #[error("{0:?}: `*` is only allowed alone, as a prefix (`*abc`) or as a suffix (`abc*`)")]
    Wildcard(String),
    #[error("unknown condition key {0:?}")]
    ConditionKey(String),
}

/// A CIDR block, or a plain address meaning just that address (/32 or /128). Host bits are
/// cleared (`10.1.2.3/8` is `10.0.0.0/8`), as Istio does.
pub fn parse_ip_block(s: &str) -> Result<IpNet, ValueError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| ValueError::IpBlock(s.to_owned()))
}

/// A destination port; Istio writes them as strings.
pub fn parse_port(s: &str) -> Result<u16, ValueError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ValueError::Port(s.to_owned())),
    }
}

/// Istio's string match for principals, namespaces and hosts: exact, `*` (present, non-empty),
/// `prefix*`, `*suffix`. Nothing else: `a*b` would silently match only the literal `a*b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringPattern {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty);
        }
        if s == "*" {
            return Ok(StringPattern::Present);
        }
        let (pattern, rest) = if let Some(rest) = s.strip_prefix('*') {
            (StringPattern::Suffix(rest.to_owned()), rest)
        } else if let Some(rest) = s.strip_suffix('*') {
            (StringPattern::Prefix(rest.to_owned()), rest)
        } else {
            (StringPattern::Exact(s.to_owned()), s)
        };
        if rest.contains('*') {
            return Err(ValueError::Wildcard(s.to_owned()));
        }
        Ok(pattern)
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringPattern::Exact(e) => value == e,
            StringPattern::Prefix(p) => value.starts_with(p.as_str()),
            StringPattern::Suffix(s) => value.ends_with(s.as_str()),
            StringPattern::Present => !value.is_empty(),
        }
    }
}

/// The `when` keys. Those the node can evaluate from the connection alone are named; everything
/// Istio knows beyond that (headers, JWT claims, SNI, ...) is [`ConditionKey::L7`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKey {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    L7,
}

impl ConditionKey {
    /// Refuses keys Istio does not know, so a misspelt key is an error and not a rule that never
    /// (or, in a DENY policy, always) matches.
    pub fn parse(key: &str) -> Result<Self, ValueError> {
        Ok(match key {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "request.auth.principal"
            | "request.auth.audiences"
            | "request.auth.presenter"
            | "connection.sni" => ConditionKey::L7,
            k if is_bracketed(k, "request.headers[")
                || is_bracketed(k, "request.auth.claims[")
                || k.starts_with("experimental.envoy.filters.") =>
            {
                ConditionKey::L7
            }
            _ => return Err(ValueError::ConditionKey(key.to_owned())),
        })
    }
}

fn is_bracketed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| !inner.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuthorizationPolicy, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    fn paths(yaml: &str) -> Vec<String> {
        parse(yaml)
            .unwrap()
            .validate()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn policy_parses_full_shape_and_round_trips() {
        let yaml = r#"
name: deny-sleep
namespace: default
selector: {matchLabels: {app: echo}}
action: DENY
rules:
  - from:
      - source:
          principals: ["cluster.local/ns/default/sa/sleep"]
          notNamespaces: [kube-system]
          ipBlocks: ["10.0.0.0/8", "1.2.3.4"]
          remoteIpBlocks: ["fd00::/8"]
          requestPrincipals: ["*"]
    to:
      - operation:
          ports: ["8080", 9090]
          methods: [GET]
    when:
      - key: destination.port
        values: [8080]
      - key: request.headers[x-user]
        notValues: [admin]
"#;
        let p = parse(yaml).unwrap();
        assert_eq!(p.action, Action::Deny);
        assert_eq!(p.validate(), vec![]);
        let op = p.rules[0].to[0].operation.as_ref().unwrap();
        assert_eq!(op.ports, vec![Scalar::from("8080"), Scalar::from("9090")]);
        assert_eq!(p.rules[0].when[0].values, vec![Scalar::from("8080")]);
        let json = serde_json::to_string(&p).unwrap();
        let back: AuthorizationPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn policy_defaults_to_allow_with_no_rules() {
        let p = parse("{name: a, namespace: b}").unwrap();
        assert_eq!(p.action, Action::Allow);
        assert!(p.rules.is_empty());
        assert!(!p.is_waypoint_policy());
        assert_eq!(p.key(), "b/a");
    }

    #[test]
    fn policy_rejects_unknown_field() {
        let err =
            parse("{name: a, namespace: b, rules: [{from: [{source: {notPrincipal: [x]}}]}]}")
                .unwrap_err()
                .to_string();
        assert!(err.contains("notPrincipal"), "{err}");
        assert!(parse("{name: a, namespace: b, spec: {}}").is_err());
    }

    #[test]
    fn policy_rejects_custom_action_clearly() {
        let err = parse("{name: a, namespace: b, action: CUSTOM}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CUSTOM") && err.contains("not supported"),
            "{err}"
        );
        let err = parse("{name: a, namespace: b, action: allow}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ALLOW"), "{err}");
    }

    #[test]
    fn policy_validate_reports_bad_cidr_with_path() {
        let errs = parse(
            r#"{name: a, namespace: b, rules: [{from: [{source: {namespaces: [x]}},
                {source: {ipBlocks: ["10.0.0.0/8", "::1", "10.0.0.0/33"]}}]}]}"#,
        )
        .unwrap()
        .validate();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "rules[0].from[1].source.ipBlocks[2]");
        assert!(errs[0].message.contains("10.0.0.0/33"));
    }

    #[test]
    fn policy_validate_reports_bad_ports_with_path() {
        let got = paths(
            r#"{name: a, namespace: b, rules: [{}, {to: [{operation: {ports: ["80", 0, "x"],
                notPorts: [65536]}}], when: [{key: destination.port, values: ["70000"]}]}]}"#,
        );
        assert_eq!(
            got,
            vec![
                "rules[1].to[0].operation.ports[1]",
                "rules[1].to[0].operation.ports[2]",
                "rules[1].to[0].operation.notPorts[0]",
                "rules[1].when[0].values[0]",
            ]
        );
    }

    #[test]
    fn policy_validate_reports_structure_errors() {
        let got = paths(
            r#"{name: "", namespace: "", selector: {matchLabels: {a: b}},
                targetRefs: [{kind: Pod, name: ""}],
                rules: [{from: [{}, {source: {}}], to: [{operation: {}}],
                  when: [{key: source.ip}, {key: request.bogus, values: [x]},
                         {key: source.ip, values: [nope]}]},
                  {from: [{source: {principals: ["a*b", ""]}}]}]}"#,
        );
        assert_eq!(
            got,
            vec![
                "name",
                "namespace",
                "targetRefs",
                "targetRefs[0].kind",
                "targetRefs[0].name",
                "rules[0].from[0].source",
                "rules[0].from[1].source",
                "rules[0].to[0].operation",
                "rules[0].when[0]",
                "rules[0].when[1].key",
                "rules[0].when[2].values[0]",
                "rules[1].from[0].source.principals[0]",
                "rules[1].from[0].source.principals[1]",
            ]
        );
    }

    #[test]
    fn policy_target_refs_make_a_waypoint_policy() {
        let p =
            parse("{name: a, namespace: b, targetRefs: [{kind: Service, group: '', name: echo}]}")
                .unwrap();
        assert!(p.is_waypoint_policy());
        assert_eq!(p.validate(), vec![]);
    }

    #[test]
    fn policy_value_parsers() {
        assert_eq!(parse_ip_block("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(
            parse_ip_block("fd00::1").unwrap().to_string(),
            "fd00::1/128"
        );
        assert_eq!(
            parse_ip_block("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(parse_ip_block("10.0.0").is_err());
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").is_err());
        assert_eq!(StringPattern::parse("*"), Ok(StringPattern::Present));
        assert_eq!(
            StringPattern::parse("a*"),
            Ok(StringPattern::Prefix("a".into()))
        );
        assert_eq!(
            StringPattern::parse("*a"),
            Ok(StringPattern::Suffix("a".into()))
        );
        assert!(StringPattern::parse("*a*").is_err());
        assert!(!StringPattern::Present.matches(""));
        assert_eq!(
            ConditionKey::parse("request.headers[x]"),
            Ok(ConditionKey::L7)
        );
        assert!(ConditionKey::parse("request.headers[]").is_err());
    }

    #[test]
    fn policy_selector_is_a_label_subset() {
        let labels: BTreeMap<String, String> =
            [("app".into(), "echo".into()), ("v".into(), "1".into())].into();
        let sel = |pairs: &[(&str, &str)]| WorkloadSelector {
            match_labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(sel(&[]).matches(&labels));
        assert!(sel(&[("app", "echo")]).matches(&labels));
        assert!(!sel(&[("app", "echo"), ("v", "2")]).matches(&labels));
        assert!(!sel(&[("tier", "web")]).matches(&labels));
    }
}
