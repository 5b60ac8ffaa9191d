//! The per-reload policy index: compiled policies grouped by namespace and action, so that one
//! evaluation looks at the root namespace's policies and the workload's namespace's, nothing
//! else, and reaches a DENY verdict before looking at any ALLOW policy.

use foldhash::{HashMap, HashMapExt};

use crate::model::policy::{Action, AuthorizationPolicy};

use super::compile::{CompiledPolicy, Peer, compile};
use super::{ConnectionInfo, Decision, DecisionReason, WorkloadRef};

/// All authorization policies of one mesh configuration, ready for per-connection evaluation.
#[derive(Debug)]
pub struct PolicyIndex {
    policies: Vec<AuthorizationPolicy>,
    root_namespace: String,
    /// Policies of the root namespace, which apply across the mesh.
    root: Scope,
    /// Policies of every other namespace, keyed by namespace.
    namespaces: HashMap<String, Scope>,
    /// Waypoint policies attached to a Service: namespace -> service name -> indexes into
    /// `policies`.
    attached: HashMap<String, HashMap<String, Vec<usize>>>,
}

#[derive(Debug, Default)]
struct Scope {
    deny: Vec<CompiledPolicy>,
    allow: Vec<CompiledPolicy>,
    audit: Vec<CompiledPolicy>,
}

impl Scope {
    fn add(&mut self, action: Action, p: CompiledPolicy) {
        match action {
            Action::Deny => self.deny.push(p),
            Action::Allow => self.allow.push(p),
            Action::Audit => self.audit.push(p),
        }
    }
}

impl PolicyIndex {
    /// Compiles `policies` (which the caller should have validated; see
    /// [`AuthorizationPolicy::validate`]). Waypoint policies (`targetRefs`) are kept for
    /// [`PolicyIndex::policies`] but not indexed: the node does not enforce them.
    pub fn new(policies: Vec<AuthorizationPolicy>, root_namespace: &str) -> Self {
        let mut root = Scope::default();
        let mut namespaces: HashMap<String, Scope> = HashMap::new();
        for p in policies.iter().filter(|p| !p.is_waypoint_policy()) {
            let scope = if p.namespace == root_namespace {
                &mut root
            } else {
                namespaces.entry(p.namespace.clone()).or_default()
            };
            scope.add(p.action, compile(p));
        }
        let mut attached: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            for t in p.target_refs.iter().filter(|t| t.kind == "Service") {
                let ns = t.namespace.clone().unwrap_or_else(|| p.namespace.clone());
                attached
                    .entry(ns)
                    .or_default()
                    .entry(t.name.clone())
                    .or_default()
                    .push(i);
            }
        }
        PolicyIndex {
            policies,
            root_namespace: root_namespace.to_owned(),
            root,
            namespaces,
            attached,
        }
    }

    /// The waypoint policies whose `targetRefs` name Service `namespace/name`.
    pub fn attached_to<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        self.attached
            .get(namespace)
            .and_then(|m| m.get(name))
            .into_iter()
            .flatten()
            .map(|&i| &self.policies[i])
    }

    /// Every policy as configured, waypoint ones included, for config dumps.
    pub fn policies(&self) -> &[AuthorizationPolicy] {
        &self.policies
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// Decides one connection to `workload`. Allocates only to report matching AUDIT policies.
    pub fn evaluate(&self, workload: &WorkloadRef<'_>, conn: &ConnectionInfo<'_>) -> Decision {
        let peer = Peer::new(conn);
        let local = if workload.namespace == self.root_namespace {
            None // the root namespace's own workloads: `root` already covers them
        } else {
            self.namespaces.get(workload.namespace)
        };
        let scopes = || std::iter::once(&self.root).chain(local);
        let applying = |list: fn(&Scope) -> &[CompiledPolicy]| {
            scopes()
                .flat_map(list)
                .filter(|p| p.selects(workload.labels))
        };

        let audited = applying(|s| &s.audit)
            .filter(|p| p.matches(&peer))
            .map(|p| p.key.clone())
            .collect();

        if let Some(p) = applying(|s| &s.deny).find(|p| p.matches(&peer)) {
            let policy = p.key.clone();
            return Decision::new(DecisionReason::DeniedBy { policy }, audited);
        }

        let mut any_allow = false;
        for p in applying(|s| &s.allow) {
            if p.matches(&peer) {
                let policy = p.key.clone();
                return Decision::new(DecisionReason::AllowedBy { policy }, audited);
            }
            any_allow = true;
        }
        let reason = if any_allow {
            DecisionReason::NoAllowMatched
        } else {
            DecisionReason::NoPolicies
        };
        Decision::new(reason, audited)
    }
}
