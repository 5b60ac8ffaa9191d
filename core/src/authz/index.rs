//! The per-reload policy index: compiled policies grouped by namespace and action, so that one
//! evaluation looks at the root namespace's policies and the workload's namespace's, nothing
//! else, and reaches a DENY verdict before looking at any ALLOW policy. Waypoint policies are
//! compiled separately, with L7 semantics, and grouped by what they are attached to.

use foldhash::{HashMap, HashMapExt};

use crate::model::policy::{Action, AuthorizationPolicy, PolicyTargetRef};

use super::compile::{CompiledPolicy, Layer, Peer, compile};
use super::{ConnectionInfo, Decision, DecisionReason, RequestInfo, WorkloadRef};

/// All authorization policies of one mesh configuration, ready for per-connection (node) and
/// per-request (waypoint) evaluation.
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
    /// Every waypoint policy, compiled for L7, in configuration order.
    waypoint: Vec<CompiledPolicy>,
    /// The same policies compiled for L4: what a waypoint enforces on TCP it carries.
    waypoint_tcp: Vec<CompiledPolicy>,
    /// What the waypoint policies of each namespace are attached to.
    targets: HashMap<String, Targets>,
}

/// The waypoint policies of one namespace by the Service or Gateway (waypoint) they name.
#[derive(Debug, Default)]
struct Targets {
    services: HashMap<String, Attached>,
    gateways: HashMap<String, Attached>,
}

/// Indexes into `PolicyIndex::waypoint`, ascending and without duplicates, so that a policy
/// attached both to a service and to its waypoint is evaluated (and audited) once, and
/// decisions name policies in configuration order.
#[derive(Debug, Default)]
struct Attached {
    deny: Vec<usize>,
    allow: Vec<usize>,
    audit: Vec<usize>,
}

impl Attached {
    fn add(&mut self, action: Action, i: usize) {
        let list = match action {
            Action::Deny => &mut self.deny,
            Action::Allow => &mut self.allow,
            Action::Audit => &mut self.audit,
        };
        // Policies are added in ascending order; this drops a repeated targetRef.
        if list.last() != Some(&i) {
            list.push(i);
        }
    }
}

/// What a waypoint policy's `targetRef` attaches it to, as the waypoint enforces it.
enum Target<'a> {
    Service(&'a str),
    Gateway(&'a str),
}

/// Kind Service in the core group, or kind Gateway in the Gateway API group (a waypoint is a
/// Gateway). Other kinds (ServiceEntry, GatewayClass) are not attached to anything weft's
/// waypoint serves. A `namespace` other than the policy's own is ignored: Istio refuses
/// cross-namespace targetRefs, and honouring one would let a namespace's owner attach policy to
/// another's services.
fn target<'a>(policy: &AuthorizationPolicy, t: &'a PolicyTargetRef) -> Option<Target<'a>> {
    if t.namespace
        .as_deref()
        .is_some_and(|ns| ns != policy.namespace)
    {
        tracing::warn!(
            policy = %policy.key(), target = %t.name,
            "targetRef names another namespace; Istio does not allow this, ignoring it"
        );
        return None;
    }
    match (t.group.as_str(), t.kind.as_str()) {
        ("" | "core", "Service") => Some(Target::Service(&t.name)),
        ("gateway.networking.k8s.io", "Gateway") => Some(Target::Gateway(&t.name)),
        _ => None,
    }
}

/// The union of two ascending index lists, ascending and without duplicates, allocation-free.
struct Union<'a> {
    a: &'a [usize],
    b: &'a [usize],
}

impl Iterator for Union<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let next = match (self.a.first(), self.b.first()) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => return None,
        };
        for list in [&mut self.a, &mut self.b] {
            if list.first() == Some(&next) {
                *list = list.get(1..).unwrap_or_default();
            }
        }
        Some(next)
    }
}

/// Istio's decision over the policies that apply: AUDIT matches are reported, a matching DENY
/// denies, then if any ALLOW applies one must match. Allocates only for AUDIT matches.
fn decide<'p>(
    audit: impl Iterator<Item = &'p CompiledPolicy>,
    mut deny: impl Iterator<Item = &'p CompiledPolicy>,
    allow: impl Iterator<Item = &'p CompiledPolicy>,
    peer: &Peer<'_>,
) -> Decision {
    let audited = audit
        .filter(|p| p.matches(peer))
        .map(|p| p.key.clone())
        .collect();

    if let Some(p) = deny.find(|p| p.matches(peer)) {
        let policy = p.key.clone();
        return Decision::new(DecisionReason::DeniedBy { policy }, audited);
    }

    let mut any_allow = false;
    for p in allow {
        if p.matches(peer) {
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
    /// [`AuthorizationPolicy::validate`]). Waypoint policies (`targetRefs`) are compiled with L7
    /// semantics for [`PolicyIndex::evaluate_waypoint`] and never seen by
    /// [`PolicyIndex::evaluate`]: the node does not enforce them.
    pub fn new(policies: Vec<AuthorizationPolicy>, root_namespace: &str) -> Self {
        let mut root = Scope::default();
        let mut namespaces: HashMap<String, Scope> = HashMap::new();
        for p in policies.iter().filter(|p| !p.is_waypoint_policy()) {
            let scope = if p.namespace == root_namespace {
                &mut root
            } else {
                namespaces.entry(p.namespace.clone()).or_default()
            };
            scope.add(p.action, compile(p, Layer::L4));
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
        let mut waypoint = Vec::new();
        let mut waypoint_tcp = Vec::new();
        let mut targets: HashMap<String, Targets> = HashMap::new();
        for p in policies.iter().filter(|p| p.is_waypoint_policy()) {
            let i = waypoint.len();
            waypoint.push(compile(p, Layer::L7));
            waypoint_tcp.push(compile(p, Layer::L4));
            for t in &p.target_refs {
                let Some(t) = target(p, t) else { continue };
                let of_ns = targets.entry(p.namespace.clone()).or_default();
                let (map, name) = match t {
                    Target::Service(name) => (&mut of_ns.services, name),
                    Target::Gateway(name) => (&mut of_ns.gateways, name),
                };
                map.entry(name.to_owned()).or_default().add(p.action, i);
            }
        }
        PolicyIndex {
            policies,
            root_namespace: root_namespace.to_owned(),
            root,
            namespaces,
            attached,
            waypoint,
            waypoint_tcp,
            targets,
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

        decide(
            applying(|s| &s.audit),
            applying(|s| &s.deny),
            applying(|s| &s.allow),
            &peer,
        )
    }

    /// Decides one request that waypoint `waypoint` (a Gateway of `namespace`) received for
    /// Service `namespace/service`, with Istio's L7 semantics. The policies that apply are the
    /// waypoint policies of `namespace` attached to that Service or to that Gateway; selector
    /// policies are the nodes' to enforce. `conn.destination_port` is the service port the
    /// request came to, `req.path` the normalised path. Allocates only to report matching AUDIT
    /// policies.
    pub fn evaluate_waypoint(
        &self,
        namespace: &str,
        service: &str,
        waypoint: &str,
        conn: &ConnectionInfo<'_>,
        req: &RequestInfo<'_>,
    ) -> Decision {
        let peer = Peer::with_request(conn, req);
        self.decide_attached(namespace, service, waypoint, &self.waypoint, &peer)
    }

    /// Like [`PolicyIndex::evaluate_waypoint`] for a connection the waypoint carries as TCP:
    /// the same policies with the node's view of HTTP attributes (an ALLOW rule naming one
    /// matches nothing, a DENY rule is enforced on the rest).
    pub fn evaluate_waypoint_tcp(
        &self,
        namespace: &str,
        service: &str,
        waypoint: &str,
        conn: &ConnectionInfo<'_>,
    ) -> Decision {
        let peer = Peer::new(conn);
        self.decide_attached(namespace, service, waypoint, &self.waypoint_tcp, &peer)
    }

    fn decide_attached(
        &self,
        namespace: &str,
        service: &str,
        waypoint: &str,
        compiled: &[CompiledPolicy],
        peer: &Peer<'_>,
    ) -> Decision {
        let of_ns = self.targets.get(namespace);
        let by_service = of_ns.and_then(|t| t.services.get(service));
        let by_gateway = of_ns.and_then(|t| t.gateways.get(waypoint));
        let applying = |list: fn(&Attached) -> &[usize]| {
            Union {
                a: by_service.map_or(&[][..], list),
                b: by_gateway.map_or(&[][..], list),
            }
            .filter_map(|i| compiled.get(i))
        };
        decide(
            applying(|a| &a.audit),
            applying(|a| &a.deny),
            applying(|a| &a.allow),
            peer,
        )
    }
}
