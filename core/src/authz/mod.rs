//! Authorization: Istio's `AuthorizationPolicy` semantics, at the two places weft enforces
//! them.
//!
//! **At the node** ([`PolicyIndex::evaluate`]): may this connection reach this workload? As
//! ztunnel applies them, where only the peer's identity, addresses and the destination port are
//! visible.
//!
//! - Scope: a policy in the root namespace applies mesh-wide (to every workload, or with a
//!   selector to matching workloads in any namespace); elsewhere it applies to its namespace's
//!   workloads, narrowed by its selector. Policies with `targetRefs` belong to waypoints and are
//!   never applied here.
//! - L7 attributes (request principals, hosts, methods, paths, header and JWT conditions): an
//!   ALLOW or AUDIT rule naming any of them matches nothing; a DENY rule is enforced on its L4
//!   part alone. Both choices err towards denying.
//!
//! **At a waypoint** ([`PolicyIndex::evaluate_waypoint`]): may this HTTP request reach this
//! service?
//!
//! - Scope: the policies of the service's namespace whose `targetRefs` name the Service (group
//!   `""` or `core`) or the waypoint's Gateway (group `gateway.networking.k8s.io`). A targetRef
//!   naming another namespace attaches nothing (Istio refuses them). Selector policies are the
//!   nodes' and are not applied here.
//! - Everything the node matches, plus `methods` (case-sensitive), `paths` (against the path
//!   from [`normalize_path`], without query), `hosts` (case-insensitive; a pattern without a
//!   port also matches the host with its port removed, so `example.com` covers
//!   `example.com:8080`), `ports` (the service port the request came to) and `when` on
//!   `request.headers[name]` (name case-insensitive; any of several values may match; an
//!   absent header fails `values` and passes `notValues`). All of them take Istio's string
//!   patterns: exact, `prefix*`, `*suffix`, `*`.
//! - Request authentication (`requestPrincipals`, `request.auth.*`, other non-header keys) is
//!   not supported (weft does not validate JWTs): treated as the node treats L7 attributes.
//!
//! Both decide the same way: a matching DENY policy denies; otherwise, if no ALLOW policy
//! applies the request is allowed; otherwise a matching ALLOW policy allows and anything else
//! is denied. AUDIT matches are reported for logging and never change the outcome.
//!
//! [`PolicyIndex`] compiles policies once per mesh reload; evaluation then runs per connection
//! or request and allocates only when an AUDIT policy matches.

mod compile;
mod index;
#[cfg(test)]
mod l7_tests;
mod path;
mod request;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use compile::has_l7_rules;
pub use index::PolicyIndex;
pub use path::{PathError, normalize_path};
pub use request::RequestInfo;

/// What the node knows about an inbound connection when it authorizes it; at a waypoint, the
/// connection a request came on, with the destination being the service address and port the
/// request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo<'a> {
    /// The peer's full SPIFFE ID (`spiffe://td/ns/x/sa/y`), or None for plaintext peers.
    pub source_principal: Option<&'a str>,
    /// The namespace from the peer's identity, or None for plaintext peers.
    pub source_namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// The destination workload, as far as policy scope needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadRef<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The outcome for one connection or request, with enough detail to log why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: DecisionReason,
    /// AUDIT policies (`namespace/name`) that matched; the caller logs them.
    pub audited: Vec<Arc<str>>,
}

/// Why a connection or request was allowed or denied. Policy names are `namespace/name`, shared (`Arc`)
/// with the index so that building a decision does not allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionReason {
    /// No ALLOW policy applies to the workload (or service) and no DENY policy matched.
    NoPolicies,
    AllowedBy {
        policy: Arc<str>,
    },
    DeniedBy {
        policy: Arc<str>,
    },
    /// ALLOW policies apply to the workload (or service) but none matched.
    NoAllowMatched,
}

impl Decision {
    fn new(reason: DecisionReason, audited: Vec<Arc<str>>) -> Self {
        let allowed = matches!(
            reason,
            DecisionReason::NoPolicies | DecisionReason::AllowedBy { .. }
        );
        Decision {
            allowed,
            reason,
            audited,
        }
    }
}

impl fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionReason::NoPolicies => f.write_str("no ALLOW policy applies"),
            DecisionReason::AllowedBy { policy } => write!(f, "allowed by policy {policy}"),
            DecisionReason::DeniedBy { policy } => write!(f, "denied by policy {policy}"),
            DecisionReason::NoAllowMatched => f.write_str("no ALLOW policy matched"),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allow" } else { "deny" };
        write!(f, "{verdict}: {}", self.reason)?;
        if !self.audited.is_empty() {
            f.write_str(" (audited by ")?;
            for (i, p) in self.audited.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str(p)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}
