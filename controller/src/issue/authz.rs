//! Which identities a caller may obtain.
//!
//! A workload may always have its own identity (a waypoint asks for its own). A node agent
//! (one of the configured service accounts) may also ask on behalf of a workload, but only for
//! a service account that has a pod scheduled on the agent's own node. The node is the one
//! the agent's token is bound to, read from the API server, never from the request, so
//! a node can never obtain another node's identities.

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use weft_core::identity::SpiffeId;

use super::Refusal;
use super::authn::Caller;

/// A service account allowed to request identities for the pods on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgent {
    pub namespace: String,
    pub service_account: String,
}

impl std::str::FromStr for NodeAgent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Ok(Self {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            }),
            _ => Err(format!("{s:?} is not NAMESPACE/SERVICE_ACCOUNT")),
        }
    }
}

/// Decides requests with the API server's view of where pods are scheduled.
#[derive(Clone)]
pub struct NodeAuthorizer {
    client: Client,
    node_agents: Vec<NodeAgent>,
    /// The controller's own identity. A node agent never gets it (nor another node agent's),
    /// even when that pod runs on its node: with it, a node could pose as the CA to the other
    /// nodes and collect their tokens.
    controller: SpiffeId,
}

impl NodeAuthorizer {
    pub fn new(client: Client, node_agents: Vec<NodeAgent>, controller: SpiffeId) -> Self {
        Self {
            client,
            node_agents,
            controller,
        }
    }

    fn is_node_agent(&self, id: &SpiffeId) -> bool {
        self.node_agents
            .iter()
            .any(|a| a.namespace == id.namespace() && a.service_account == id.service_account())
    }

    /// Ok when `caller` may hold `requested`; returns the node the decision was made for,
    /// if it was an impersonated request.
    pub async fn authorize(
        &self,
        caller: &Caller,
        requested: &SpiffeId,
    ) -> Result<Option<String>, Refusal> {
        if &caller.identity == requested {
            return Ok(None);
        }
        if !self.is_node_agent(&caller.identity) {
            return Err(Refusal::NotNodeAgent {
                caller: caller.identity.to_string(),
                requested: requested.to_string(),
            });
        }
        if requested == &self.controller || self.is_node_agent(requested) {
            return Err(Refusal::ControlPlaneIdentity(requested.to_string()));
        }
        let node = self.caller_node(caller).await?;
        // The API server fills in `serviceAccountName` on every pod, so an exact match on
        // it finds exactly the pods that run as the requested identity.
        let selector = format!(
            "spec.nodeName={node},spec.serviceAccountName={}",
            requested.service_account()
        );
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), requested.namespace());
        let list = pods
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(|e| Refusal::ApiUnavailable(format!("listing pods on {node}: {e}")))?;
        let running = list.items.iter().any(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let spec = pod.spec.as_ref();
            // Checked again here rather than trusting the selector to have been applied.
            let on_node = spec.and_then(|s| s.node_name.as_deref()) == Some(&node);
            let runs_as = spec
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default")
                == requested.service_account();
            on_node && runs_as && !matches!(phase, Some("Succeeded" | "Failed"))
        });
        if running {
            Ok(Some(node))
        } else {
            Err(Refusal::NotOnNode {
                requested: requested.to_string(),
                node,
            })
        }
    }

    /// The node the caller's token is bound to: its pod, as the API server has it now.
    async fn caller_node(&self, caller: &Caller) -> Result<String, Refusal> {
        let Some((name, uid)) = &caller.pod else {
            return Err(Refusal::Unbound(caller.identity.to_string()));
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), caller.identity.namespace());
        let pod = pods.get_opt(name).await.map_err(|e| {
            Refusal::ApiUnavailable(format!("reading the caller's pod {name}: {e}"))
        })?;
        let pod = pod
            .filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
            .ok_or_else(|| Refusal::CallerPodGone(name.clone()))?;
        pod.spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Refusal::CallerPodGone(name.clone()))
    }
}
