//! Policy status: what the mesh makes of each AuthorizationPolicy, written to its status
//! subresource as the condition `Accepted`, so that `kubectl get -o yaml` tells a policy's
//! author why it does not do what they meant. The controller is the one writer for the
//! cluster (every weftd would otherwise race to write the same field); nodes only read.
//!
//! - Invalid (a bad principal, port or CIDR): `Accepted=False`, reason `Invalid`, every field
//!   at fault. Nodes enforce it failing closed: an invalid ALLOW allows nothing, an invalid
//!   DENY denies everything it selects.
//! - Valid but with L7 rules and no `targetRefs`: `Accepted=True`, reason `L7RulesAtL4`. A node
//!   cannot see HTTP, so such an ALLOW rule matches nothing there and a DENY rule denies on its
//!   L4 part alone; a waypoint enforces them.
//! - Otherwise `Accepted=True`, reason `Accepted`.

use std::time::SystemTime;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weft_core::authz::has_l7_rules;
use weft_core::discovery::crd::AuthorizationPolicy;

const CONDITION: &str = "Accepted";

/// The `Accepted` condition a policy should carry: (status, reason, message).
pub fn judge(policy: &AuthorizationPolicy) -> (&'static str, &'static str, String) {
    let model = policy.to_model();
    let errors = model.validate();
    if !errors.is_empty() {
        let fields: Vec<String> = errors
            .iter()
            .map(|e| format!("spec.{}: {}", e.path, e.message))
            .collect();
        let enforced = match model.action {
            weft_core::model::policy::Action::Allow => "it allows nothing until it is fixed",
            weft_core::model::policy::Action::Deny => {
                "it denies everything it selects until it is fixed"
            }
            weft_core::model::policy::Action::Audit => "it is not applied",
        };
        return (
            "False",
            "Invalid",
            format!("{}; {enforced}", fields.join("; ")),
        );
    }
    if policy.spec.target_refs.is_empty() && has_l7_rules(&model) {
        return (
            "True",
            "L7RulesAtL4",
            "rules with methods, paths, hosts, request principals or request keys cannot be seen by the nodes: there an ALLOW rule with them matches nothing and a DENY rule denies on its L4 part alone; bind the policy to a waypoint with targetRefs to enforce them".to_owned(),
        );
    }
    ("True", "Accepted", "enforced by the nodes".to_owned())
}

/// Keeps every policy's status current until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let api: Api<AuthorizationPolicy> = Api::all(client.clone());
    let mut policies = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = policies.next() => next,
        };
        match next {
            None => return,
            Some(Ok(policy)) => {
                if let Err(e) = write(&client, &policy).await {
                    warn!(
                        policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any()),
                        "writing the policy's status: {e}"
                    );
                }
            }
            // The watcher retries with backoff; say why meanwhile.
            Some(Err(e)) => warn!("watching AuthorizationPolicies: {e}"),
        }
    }
}

/// Patches the status when the condition differs from what is there; our own patch comes
/// back as an event and then finds nothing to change.
async fn write(client: &Client, policy: &AuthorizationPolicy) -> Result<(), kube::Error> {
    let (status, reason, message) = judge(policy);
    let generation = policy.metadata.generation;
    let current = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION));
    if let Some(c) = current
        && c.status == status
        && c.reason == reason
        && c.message == message
        && c.observed_generation == generation
    {
        return Ok(());
    }
    // The transition time moves only when the status does.
    let since = match current {
        Some(c) if c.status == status => {
            serde_json::to_value(&c.last_transition_time).unwrap_or_else(|_| json!(now()))
        }
        _ => json!(now()),
    };
    let mut condition = json!({
        "type": CONDITION, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        condition["observedGeneration"] = json!(g);
    }
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), &namespace);
    api.patch_status(
        &policy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [condition]}})),
    )
    .await?;
    debug!(policy = %format!("{namespace}/{}", policy.name_any()), status, reason, "policy status written");
    Ok(())
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
