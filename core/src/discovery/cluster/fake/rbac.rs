//! What the chart's RBAC grants a component, checked against what the component asked the
//! fake. A request its roles do not grant is a component that works against the fake and is
//! refused (403) by a real API server: the one failure the fake would otherwise hide.

use std::fmt;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};

/// One request, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: &'static str,
    pub group: String,
    /// `pods`, or `pods/status` for a subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The bearer token it came with: who asked, when components share one fake.
    pub token: Option<String>,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " named {name}")?;
        }
        Ok(())
    }
}

/// The rules a component holds: cluster-wide, and per namespace.
#[derive(Debug, Default)]
pub struct Grants {
    cluster: Vec<PolicyRule>,
    namespaced: Vec<(String, PolicyRule)>,
}

fn documents(manifests: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(manifests)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &serde_json::Value| v.is_object())
        .collect()
}

fn parse<T: serde::de::DeserializeOwned>(doc: &serde_json::Value) -> Option<T> {
    serde_json::from_value(doc.clone()).ok()
}

impl Grants {
    /// What the rendered manifests bind to ServiceAccount `namespace/account`.
    pub fn bound(manifests: &str, namespace: &str, account: &str) -> Grants {
        let docs = documents(manifests);
        let named = |kind: &str, name: &str, ns: Option<&str>| {
            docs.iter()
                .find(|d| {
                    d["kind"] == kind
                        && d["metadata"]["name"] == name
                        && ns.is_none_or(|ns| d["metadata"]["namespace"] == ns)
                })
                .cloned()
        };
        let cluster_rules = |name: &str| {
            named("ClusterRole", name, None)
                .and_then(|d| parse::<ClusterRole>(&d))
                .and_then(|r| r.rules)
                .unwrap_or_default()
        };
        let is_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == account
                    && s.namespace.as_deref() == Some(namespace)
            })
        };
        let mut grants = Grants::default();
        for d in &docs {
            if d["kind"] == "ClusterRoleBinding"
                && let Some(b) = parse::<ClusterRoleBinding>(d)
                && is_subject(&b.subjects)
            {
                grants.cluster.extend(cluster_rules(&b.role_ref.name));
            }
            if d["kind"] == "RoleBinding"
                && let Some(b) = parse::<RoleBinding>(d)
                && is_subject(&b.subjects)
            {
                let ns = b.metadata.namespace.clone().unwrap_or_default();
                let rules = match b.role_ref.kind.as_str() {
                    "ClusterRole" => cluster_rules(&b.role_ref.name),
                    _ => named("Role", &b.role_ref.name, Some(&ns))
                        .and_then(|d| parse::<Role>(&d))
                        .and_then(|r| r.rules)
                        .unwrap_or_default(),
                };
                grants
                    .namespaced
                    .extend(rules.into_iter().map(|r| (ns.clone(), r)));
            }
        }
        grants
    }

    /// The rules of ClusterRole `name`, as a cluster-wide binding grants them.
    pub fn cluster_role(manifests: &str, name: &str) -> Grants {
        let rules = documents(manifests)
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
            .filter_map(parse::<ClusterRole>)
            .flat_map(|r| r.rules.unwrap_or_default())
            .collect();
        Grants {
            cluster: rules,
            namespaced: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cluster.is_empty() && self.namespaced.is_empty()
    }

    pub fn allows(&self, a: &Access) -> bool {
        let rule = |r: &PolicyRule| {
            let has = |list: &Option<Vec<String>>, want: &str| {
                list.iter().flatten().any(|v| v == "*" || v == want)
            };
            has(&r.api_groups, &a.group)
                && has(&Some(r.resources.clone().unwrap_or_default()), &a.resource)
                && r.verbs.iter().any(|v| v == "*" || v == a.verb)
                && match r.resource_names.as_deref() {
                    None | Some([]) => true,
                    // A list or a create has no name to match, so such a rule never grants it.
                    Some(names) => a.name.as_ref().is_some_and(|n| names.contains(n)),
                }
        };
        self.cluster.iter().any(rule)
            || self
                .namespaced
                .iter()
                .any(|(ns, r)| a.namespace.as_deref() == Some(ns.as_str()) && rule(r))
    }

    /// Each distinct request in `asked` these grants refuse.
    pub fn refused(&self, asked: &[Access]) -> Vec<String> {
        let mut out: Vec<String> = asked
            .iter()
            .filter(|a| !self.allows(a))
            .map(ToString::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
