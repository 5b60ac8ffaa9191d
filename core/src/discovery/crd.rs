//! weft's own Kubernetes resources. The Rust types are the source of truth: the CRD YAML under
//! `deploy/` is generated from them (`cargo xtask manifests`), so the schema the API server
//! enforces and the one weft parses cannot drift apart.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::policy::{self, Action, PolicyTargetRef, Rule, WorkloadSelector};
pub use crate::model::traffic::TrafficPolicyResource;

/// `security.weft.dev/v1alpha1` AuthorizationPolicy: the spec of Istio's
/// `security.istio.io/v1` AuthorizationPolicy, field for field, so a user's policies port by
/// changing `apiVersion`. `CUSTOM` and `provider` are left out: weft has no external
/// authorizers, and accepting them would fail open.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.weft.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "AuthorizationPolicyStatus",
    shortname = "wap",
    category = "weft",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// Where weftd or the controller say what they made of a policy, e.g. `Accepted=False` for a
/// rule a node cannot enforce.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl AuthorizationPolicy {
    /// The flattened model form the evaluator reads (name and namespace beside the spec).
    pub fn to_model(&self) -> policy::AuthorizationPolicy {
        let spec = self.spec.clone();
        policy::AuthorizationPolicy {
            name: self.metadata.name.clone().unwrap_or_default(),
            namespace: self
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            selector: spec.selector,
            target_refs: spec.target_refs,
            action: spec.action,
            rules: spec.rules,
        }
    }
}

/// Every CRD weft defines, with the file name `deploy/crds/` keeps it under.
pub fn all() -> Vec<(String, CustomResourceDefinition)> {
    [AuthorizationPolicy::crd(), TrafficPolicyResource::crd()]
        .into_iter()
        .map(|crd| {
            (
                format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default()),
                crd,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_names_the_istio_shape_under_weft_group() {
        let crd = AuthorizationPolicy::crd();
        assert_eq!(crd.spec.group, "security.weft.dev");
        assert_eq!(crd.spec.names.kind, "AuthorizationPolicy");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let schema = serde_json::to_string(&v.schema).unwrap();
        for field in [
            "targetRefs",
            "notPrincipals",
            "ipBlocks",
            "notPaths",
            "matchLabels",
        ] {
            assert!(schema.contains(field), "{field} missing from the schema");
        }
        assert!(schema.contains("x-kubernetes-int-or-string"));
    }

    #[test]
    fn istio_policy_ports_by_changing_api_version() {
        let yaml = r#"
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: web}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
    - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
      to: [{operation: {ports: ["8080"]}}]
"#;
        let p: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        let m = p.to_model();
        assert_eq!(m.key(), "web/allow-sleep");
        assert_eq!(m.validate(), vec![]);
        let bad = yaml.replace("principals:", "principal:");
        assert!(serde_yaml_ng::from_str::<AuthorizationPolicy>(&bad).is_err());
    }
}
