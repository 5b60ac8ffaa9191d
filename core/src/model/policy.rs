//! Istio's `AuthorizationPolicy`, flattened (`name`/`namespace` next to the spec fields) so that
//! users can bring the policies they already run under Istio.
//!
//! The shape keeps what the user wrote (strings, not parsed CIDRs or ports) so that config dumps
//! echo the input and [`AuthorizationPolicy::validate`] (in `validate`) can report every bad
//! value with its field path instead of stopping at the first. The typed value parsers (in
//! `value`) are shared by validation and by `authz`, which compiles policies into matchers once
//! per reload.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

mod validate;
mod value;

pub use validate::ValidationError;
pub use value::{ConditionKey, StringPattern, ValueError, parse_ip_block, parse_port};

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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// Optional only so that a missing `source` is reported by `validate` with its path.
    #[serde(default)]
    pub source: Option<Source>,
}

/// One entry of a rule's `to` list (Istio's `Rule.To`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// Optional only so that a missing `operation` is reported by `validate` with its path.
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// Who the peer is. Every non-empty field must match; within a field any value may match; a
/// `not*` field must not match. An empty list is the same as an absent one (as in Istio's proto).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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

/// Kubernetes' int-or-string: what users write for ports and condition values.
impl JsonSchema for Scalar {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrString".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"x-kubernetes-int-or-string": true})
    }
}

/// The three actions weft enforces; the CRD's enum refuses `CUSTOM` at `kubectl apply`.
impl JsonSchema for Action {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Action".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "enum": ["ALLOW", "DENY", "AUDIT"]})
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuthorizationPolicy, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
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
    fn policy_target_refs_make_a_waypoint_policy() {
        let p =
            parse("{name: a, namespace: b, targetRefs: [{kind: Service, group: '', name: echo}]}")
                .unwrap();
        assert!(p.is_waypoint_policy());
        assert_eq!(p.validate(), vec![]);
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
