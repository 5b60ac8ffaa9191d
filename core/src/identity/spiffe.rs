//! SPIFFE identities in the one shape the mesh uses: `spiffe://<td>/ns/<ns>/sa/<sa>`.
//!
//! The identity is the unit that authorization policy and certificate issuance speak about, so
//! it is parsed strictly: anything that two parties could spell differently (case, escapes,
//! ports, extra path segments) is refused instead of normalized, because a normalizing parser
//! on one side and a literal comparison on the other is how identity confusion bugs start.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
const MAX_SUBDOMAIN_LEN: usize = 253;

/// Why a SPIFFE id (or one of its parts) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("SPIFFE id {0:?} does not start with \"spiffe://\"")]
    MissingScheme(String),
    #[error("SPIFFE id {0:?} has a query or fragment, which SPIFFE ids may not carry")]
    QueryOrFragment(String),
    #[error("invalid trust domain {value:?}: {reason}")]
    TrustDomain { value: String, reason: &'static str },
    #[error(
        "SPIFFE id {0:?} does not have the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Path(String),
    #[error("invalid namespace {value:?}: {reason}")]
    Namespace { value: String, reason: &'static str },
    #[error("invalid service account {value:?}: {reason}")]
    ServiceAccount { value: String, reason: &'static str },
}

/// A workload identity: who a certificate speaks for and what policy matches on.
///
/// Fields are private so that every value in the process went through validation; code that
/// holds a `SpiffeId` never has to re-check it. They are shared (`Arc<str>`): identities are
/// cloned per request on the waypoint's path (connection keys, targets), which must not
/// allocate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: Arc<str>,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each one the way Kubernetes and SPIFFE do,
    /// so that an identity built here always round-trips through its string form.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeError> {
        validate_trust_domain(trust_domain)?;
        validate_namespace(namespace)?;
        validate_service_account(service_account)?;
        Ok(Self {
            trust_domain: Arc::from(trust_domain),
            namespace: Arc::from(namespace),
            service_account: Arc::from(service_account),
        })
    }

    /// The trust domain: the set of identities our CA speaks for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace of the workload.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account of the workload.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

/// Checks a trust domain name against the SPIFFE spec (lowercase letters, digits, `.`, `-`,
/// `_`), so configuration errors surface at load time rather than as failed handshakes.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeError> {
    let fail = |reason| {
        Err(SpiffeError::TrustDomain {
            value: td.to_owned(),
            reason,
        })
    };
    if td.is_empty() {
        return fail("must not be empty");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return fail("longer than 255 characters");
    }
    if td.contains(':') {
        return fail("ports are not allowed in a trust domain");
    }
    if td.contains('@') {
        return fail("user info is not allowed in a trust domain");
    }
    if td.bytes().any(|b| b.is_ascii_uppercase()) {
        return fail("must be lowercase");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return fail("only lowercase letters, digits, '.', '-' and '_' are allowed");
    }
    Ok(())
}

fn validate_namespace(ns: &str) -> Result<(), SpiffeError> {
    dns1123_label(ns).map_err(|reason| SpiffeError::Namespace {
        value: ns.to_owned(),
        reason,
    })
}

fn validate_service_account(sa: &str) -> Result<(), SpiffeError> {
    dns1123_subdomain(sa).map_err(|reason| SpiffeError::ServiceAccount {
        value: sa.to_owned(),
        reason,
    })
}

/// Kubernetes' rule for namespace names (IsDNS1123Label).
fn dns1123_label(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_LABEL_LEN {
        return Err("longer than 63 characters");
    }
    label_chars(s)
}

/// Kubernetes' rule for service account names (IsDNS1123Subdomain): dot-separated labels, each
/// starting and ending with an alphanumeric, 253 characters in total.
fn dns1123_subdomain(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_SUBDOMAIN_LEN {
        return Err("longer than 253 characters");
    }
    s.split('.').try_for_each(label_chars)
}

fn label_chars(s: &str) -> Result<(), &'static str> {
    let bytes = s.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err("must not be empty (or contain an empty label)");
    };
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed");
    }
    if *first == b'-' || *last == b'-' {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The scheme is compared literally: "SPIFFE://" is a different string to every peer
        // that compares ids byte-wise, so accepting it would create two spellings of one id.
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeError::MissingScheme(s.to_owned()))?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeError::QueryOrFragment(s.to_owned()));
        }
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeError::Path(s.to_owned()))?;
        validate_trust_domain(td)?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SpiffeError::Path(s.to_owned()));
        };
        Self::new(td, ns, sa)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

// Debug prints the URI: it is what operators grep for, and the struct form adds nothing.
impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SpiffeId, SpiffeError> {
        s.parse()
    }

    #[test]
    fn parses_and_formats_round_trip() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id = parse(s).unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
        assert_eq!(
            id,
            SpiffeId::new("cluster.local", "default", "bookinfo-productpage").unwrap()
        );
    }

    #[test]
    fn accepts_spec_edge_cases() {
        parse("spiffe://a/ns/b/sa/c").unwrap();
        parse("spiffe://my_td-1.example/ns/0ns/sa/x.y-z.0").unwrap();
        let long_td = "a".repeat(255);
        parse(&format!("spiffe://{long_td}/ns/a/sa/b")).unwrap();
        let ns63 = "n".repeat(63);
        parse(&format!("spiffe://td/ns/{ns63}/sa/b")).unwrap();
    }

    #[test]
    fn rejects_wrong_scheme() {
        for s in [
            "cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe:/cluster.local/ns/a/sa/b",
            "https://cluster.local/ns/a/sa/b",
            "",
        ] {
            assert!(
                matches!(parse(s), Err(SpiffeError::MissingScheme(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_other_paths_and_empty_segments() {
        for s in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/workload/x",
            "spiffe://cluster.local//ns/a/sa/b",
        ] {
            assert!(matches!(parse(s), Err(SpiffeError::Path(_))), "{s}");
        }
        assert!(matches!(
            parse("spiffe://cluster.local/ns//sa/b"),
            Err(SpiffeError::Namespace { .. })
        ));
        assert!(matches!(
            parse("spiffe://cluster.local/ns/a/sa/"),
            Err(SpiffeError::ServiceAccount { .. })
        ));
        assert!(matches!(
            parse("spiffe:///ns/a/sa/b"),
            Err(SpiffeError::TrustDomain { .. })
        ));
    }

    #[test]
    fn rejects_query_fragment_port_userinfo() {
        assert!(matches!(
            parse("spiffe://td/ns/a/sa/b?x=1"),
            Err(SpiffeError::QueryOrFragment(_))
        ));
        assert!(matches!(
            parse("spiffe://td/ns/a/sa/b#frag"),
            Err(SpiffeError::QueryOrFragment(_))
        ));
        for s in ["spiffe://td:8443/ns/a/sa/b", "spiffe://user@td/ns/a/sa/b"] {
            assert!(
                matches!(parse(s), Err(SpiffeError::TrustDomain { .. })),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_bad_trust_domains() {
        let long = "a".repeat(256);
        for td in [
            "Cluster.local",
            "clu ster",
            "td%41",
            "td/x",
            "",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    SpiffeId::new(td, "a", "b"),
                    Err(SpiffeError::TrustDomain { .. })
                ),
                "{td:?}"
            );
        }
        let err = parse("spiffe://Cluster.local/ns/a/sa/b").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
    }

    #[test]
    fn rejects_bad_namespaces() {
        let long = "n".repeat(64);
        for ns in ["", "-a", "a-", "A", "a.b", "a_b", "a%20", long.as_str()] {
            assert!(
                matches!(
                    SpiffeId::new("td", ns, "sa"),
                    Err(SpiffeError::Namespace { .. })
                ),
                "{ns:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_service_accounts() {
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(53));
        for sa in [
            "",
            ".a",
            "a.",
            "a..b",
            "-a",
            "a.-b",
            "A",
            "a_b",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    SpiffeId::new("td", "ns", sa),
                    Err(SpiffeError::ServiceAccount { .. })
                ),
                "{sa:?}"
            );
        }
        SpiffeId::new("td", "ns", &"a".repeat(253)).unwrap();
    }

    #[test]
    fn serde_uses_string_form() {
        let id = SpiffeId::new("td", "ns", "sa").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/ns/ns/sa/sa\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/ns/a\"").unwrap_err();
        assert!(err.to_string().contains("does not have the form"), "{err}");
    }

    #[test]
    fn orders_by_trust_domain_then_namespace_then_account() {
        let mut ids = [
            parse("spiffe://b/ns/a/sa/a").unwrap(),
            parse("spiffe://a/ns/b/sa/a").unwrap(),
            parse("spiffe://a/ns/a/sa/b").unwrap(),
        ];
        ids.sort();
        let got: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "spiffe://a/ns/a/sa/b",
                "spiffe://a/ns/b/sa/a",
                "spiffe://b/ns/a/sa/a"
            ]
        );
    }
}
