//! Turns a policy into matchers once per reload, so that the per-connection (or per-request)
//! path compares integers, CIDRs, pre-split string patterns and pre-parsed header names without
//! parsing or allocating.
//!
//! A policy compiles for one [`Layer`]: the node's (connections only) or the waypoint's (HTTP
//! requests too). This is where each layer's view of the attributes it cannot see is decided
//! (see the module docs of `authz`), and where a policy that somehow skipped validation is made
//! to fail closed.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;

use crate::model::policy::{
    Action, AuthorizationPolicy, Condition, ConditionKey, Operation, Rule, Scalar, Source,
    StringPattern, ValueError, WorkloadSelector, parse_ip_block, parse_port,
};

use super::{ConnectionInfo, RequestInfo};

/// Who evaluates a policy, which decides what it can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layer {
    /// The node: the connection's identity, addresses and port. Every HTTP attribute is
    /// unsupported.
    L4,
    /// A waypoint: the connection and the HTTP request. Only what needs request authentication
    /// (JWT), which weft does not do, is unsupported.
    L7,
}

/// The connection (and at a waypoint the request) as the matchers read it: the principal
/// without its `spiffe://` scheme (the form policies are written in), addresses with
/// IPv4-mapped IPv6 folded back to IPv4.
pub(super) struct Peer<'a> {
    principal: Option<&'a str>,
    namespace: Option<&'a str>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    destination_port: u16,
    /// None at the node; request attributes then match nothing (they are never compiled for
    /// [`Layer::L4`] anyway).
    request: Option<&'a RequestInfo<'a>>,
}

impl<'a> Peer<'a> {
    pub(super) fn new(c: &ConnectionInfo<'a>) -> Self {
        Peer {
            principal: c
                .source_principal
                .map(strip_scheme)
                .filter(|p| !p.is_empty()),
            namespace: c.source_namespace.filter(|n| !n.is_empty()),
            source_ip: c.source_ip.to_canonical(),
            destination_ip: c.destination_ip.to_canonical(),
            destination_port: c.destination_port,
            request: None,
        }
    }

    pub(super) fn with_request(c: &ConnectionInfo<'a>, request: &'a RequestInfo<'a>) -> Self {
        Peer {
            request: Some(request),
            ..Peer::new(c)
        }
    }
}

fn strip_scheme(p: &str) -> &str {
    p.strip_prefix("spiffe://").unwrap_or(p)
}

/// One attribute and the values it may take.
#[derive(Debug)]
enum Values {
    Principal(Box<[StringPattern]>),
    Namespace(Box<[StringPattern]>),
    SourceIp(Box<[IpNet]>),
    DestinationIp(Box<[IpNet]>),
    DestinationPort(Box<[u16]>),
    /// Case-sensitive, as Istio matches `:method`.
    Method(Box<[StringPattern]>),
    /// Against the normalised path without query.
    Path(Box<[StringPattern]>),
    Host(Box<[HostPattern]>),
    Header {
        header: RequestHeader,
        patterns: Box<[StringPattern]>,
    },
}

impl Values {
    /// Whether the attribute takes any of the values. An absent identity takes none, which is
    /// what makes `notPrincipals: ["*"]` select plaintext peers, as in Istio; likewise an
    /// absent header, so `notValues` on it holds.
    fn any(&self, p: &Peer<'_>) -> bool {
        match self {
            Values::Principal(ms) => p.principal.is_some_and(|v| ms.iter().any(|m| m.matches(v))),
            Values::Namespace(ms) => p.namespace.is_some_and(|v| ms.iter().any(|m| m.matches(v))),
            Values::SourceIp(nets) => nets.iter().any(|n| n.contains(&p.source_ip)),
            Values::DestinationIp(nets) => nets.iter().any(|n| n.contains(&p.destination_ip)),
            Values::DestinationPort(ports) => ports.contains(&p.destination_port),
            Values::Method(ms) => p
                .request
                .is_some_and(|r| ms.iter().any(|m| m.matches(r.method))),
            Values::Path(ms) => p
                .request
                .is_some_and(|r| ms.iter().any(|m| m.matches(r.path))),
            Values::Host(hs) => p
                .request
                .is_some_and(|r| hs.iter().any(|h| h.matches(r.host))),
            Values::Header { header, patterns } => p.request.is_some_and(|r| {
                header.any_value(r, |v| patterns.iter().any(|m| header_matches(m, v)))
            }),
        }
    }
}

/// A `hosts` entry. Istio compares the Host header as sent, so `hosts: [example.com]` would not
/// match `example.com:8080`; here a pattern that names no port also matches the host with its
/// port removed, since which port a client writes (or whether it writes one) is not something a
/// policy author means to distinguish, and a DENY on a host must not be bypassed by adding
/// `:80`. A pattern that names a port (`example.com:8080`, `example.com:*`) is compared with the
/// host as sent. Case-insensitive throughout.
#[derive(Debug)]
struct HostPattern {
    pattern: StringPattern,
    portless: bool,
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, ValueError> {
        // After a `]` so that the colons of a bracketed IPv6 address are not taken for a port.
        let tail = s.rsplit_once(']').map_or(s, |(_, t)| t);
        Ok(HostPattern {
            pattern: StringPattern::parse(s)?,
            portless: !tail.contains(':'),
        })
    }

    fn matches(&self, host: &str) -> bool {
        matches_ignore_case(&self.pattern, host)
            || (self.portless
                && strip_port(host).is_some_and(|h| matches_ignore_case(&self.pattern, h)))
    }
}

/// `host:port` or `[v6]:port` to `host` / `[v6]`; None when there is no (numeric) port. A bare
/// IPv6 address has colons but no port.
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = host.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bracketed = name.starts_with('[') && name.ends_with(']');
    (bracketed || !name.contains(':')).then_some(name)
}

fn matches_ignore_case(p: &StringPattern, value: &str) -> bool {
    let v = value.as_bytes();
    match p {
        StringPattern::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
        StringPattern::Prefix(s) => v
            .get(..s.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(s.as_bytes())),
        StringPattern::Suffix(s) => v
            .len()
            .checked_sub(s.len())
            .and_then(|start| v.get(start..))
            .is_some_and(|t| t.eq_ignore_ascii_case(s.as_bytes())),
        StringPattern::Present => !v.is_empty(),
    }
}

/// A header value against an Istio string pattern, byte-wise (values need not be UTF-8). `*` is
/// Envoy's present match: any value, even empty, of a header that is there.
fn header_matches(p: &StringPattern, v: &[u8]) -> bool {
    match p {
        StringPattern::Exact(e) => v == e.as_bytes(),
        StringPattern::Prefix(s) => v.starts_with(s.as_bytes()),
        StringPattern::Suffix(s) => v.ends_with(s.as_bytes()),
        StringPattern::Present => true,
    }
}

/// The header a `request.headers[name]` condition reads. Envoy exposes the request line as
/// pseudo-headers, which `http::HeaderMap` does not hold, so those are read from the request.
#[derive(Debug)]
enum RequestHeader {
    /// `:method`.
    Method,
    /// `:path`: the normalised path, without the query (unlike Envoy's, which has it).
    Path,
    /// `:authority` or `host`: HTTP/2 carries the host outside the header map, so both read
    /// [`RequestInfo::host`] whatever the protocol.
    Authority,
    /// Any other header, by its lower-cased name (header names are case-insensitive).
    Named(HeaderName),
}

impl RequestHeader {
    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            ":method" => Some(RequestHeader::Method),
            ":path" => Some(RequestHeader::Path),
            ":authority" | "host" => Some(RequestHeader::Authority),
            // Other pseudo-headers (`:scheme`) are not header names: refused, so the rule fails
            // closed.
            n => HeaderName::from_bytes(n.as_bytes())
                .ok()
                .map(RequestHeader::Named),
        }
    }

    /// Whether any value of the header satisfies `f`; an absent header has none. Several values
    /// (repeated header lines) are tried one by one, not joined.
    fn any_value(&self, r: &RequestInfo<'_>, f: impl Fn(&[u8]) -> bool) -> bool {
        match self {
            RequestHeader::Method => f(r.method.as_bytes()),
            RequestHeader::Path => f(r.path.as_bytes()),
            // A request without a host has no `:authority`.
            RequestHeader::Authority => !r.host.is_empty() && f(r.host.as_bytes()),
            RequestHeader::Named(name) => r.headers.get_all(name).iter().any(|v| f(v.as_bytes())),
        }
    }
}

/// One field of a source, operation or condition: `values` must match, or with `negate` must not.
#[derive(Debug)]
struct Check {
    values: Values,
    negate: bool,
}

impl Check {
    fn holds(&self, p: &Peer<'_>) -> bool {
        self.values.any(p) != self.negate
    }
}

/// Checks that must all hold; empty holds for everything.
type All = Box<[Check]>;

fn all_hold(checks: &[Check], p: &Peer<'_>) -> bool {
    checks.iter().all(|c| c.holds(p))
}

#[derive(Debug)]
enum CompiledRule {
    /// An ALLOW or AUDIT rule the layer cannot evaluate (it names attributes the layer does
    /// not see), or an invalid one in such a policy.
    Never,
    Match {
        /// Any entry, or anything when empty.
        from: Box<[All]>,
        /// Any entry, or anything when empty.
        to: Box<[All]>,
        when: All,
    },
}

impl CompiledRule {
    fn always() -> Self {
        CompiledRule::Match {
            from: Box::new([]),
            to: Box::new([]),
            when: Box::new([]),
        }
    }

    fn matches(&self, p: &Peer<'_>) -> bool {
        match self {
            CompiledRule::Never => false,
            CompiledRule::Match { from, to, when } => {
                (from.is_empty() || from.iter().any(|s| all_hold(s, p)))
                    && (to.is_empty() || to.iter().any(|o| all_hold(o, p)))
                    && all_hold(when, p)
            }
        }
    }
}

/// A policy ready for per-connection (or per-request) evaluation.
#[derive(Debug)]
pub(super) struct CompiledPolicy {
    /// `namespace/name`, shared into decisions without allocating.
    pub(super) key: Arc<str>,
    selector: Option<WorkloadSelector>,
    rules: Box<[CompiledRule]>,
}

impl CompiledPolicy {
    /// Scope within the policy's namespace list (the index already picked the namespace).
    pub(super) fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    pub(super) fn matches(&self, p: &Peer<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(p))
    }
}

/// Compiles one policy for `layer`. Rules that do not compile (the loader validates, so only a
/// caller that skipped validation gets here, or a value validation does not parse, such as a
/// path pattern `/a/*/b`) fail closed: they deny everything in a DENY policy and allow nothing
/// in an ALLOW policy.
pub(super) fn compile(policy: &AuthorizationPolicy, layer: Layer) -> CompiledPolicy {
    let key: Arc<str> = Arc::from(policy.key());
    let rules = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| match compile_rule(rule, policy.action, layer) {
            Ok(r) => {
                if matches!(r, CompiledRule::Never) {
                    tracing::warn!(
                        policy = %key, rule = i, action = %policy.action,
                        "rule uses {}; it matches nothing", unsupported(layer)
                    );
                } else if policy.action == Action::Deny
                    && rule_unsupported(rule, layer).unwrap_or(false)
                {
                    tracing::info!(
                        policy = %key, rule = i,
                        "DENY rule uses {}; enforcing the rest of it alone", unsupported(layer)
                    );
                }
                r
            }
            Err(e) => {
                tracing::error!(
                    policy = %key, rule = i, error = %e,
                    "invalid rule; failing closed"
                );
                match policy.action {
                    Action::Deny => CompiledRule::always(),
                    Action::Allow | Action::Audit => CompiledRule::Never,
                }
            }
        })
        .collect();
    CompiledPolicy {
        key,
        selector: policy.selector.clone(),
        rules,
    }
}

fn unsupported(layer: Layer) -> &'static str {
    match layer {
        Layer::L4 => "HTTP attributes, which a TCP connection does not have",
        Layer::L7 => "request authentication (JWT), which weft does not support",
    }
}

/// ALLOW and AUDIT rules naming unsupported attributes match nothing (allowing on a partial
/// match would let through what the user meant to restrict). DENY rules drop those parts
/// instead, so they deny the traffic they otherwise select: wider than intended, never
/// narrower.
fn compile_rule(rule: &Rule, action: Action, layer: Layer) -> Result<CompiledRule, ValueError> {
    if action != Action::Deny && rule_unsupported(rule, layer)? {
        return Ok(CompiledRule::Never);
    }
    let from = rule
        .from
        .iter()
        .map(|f| compile_source(f.source.as_ref().ok_or(ValueError::Empty)?))
        .collect::<Result<_, _>>()?;
    let to = rule
        .to
        .iter()
        .map(|t| compile_operation(t.operation.as_ref().ok_or(ValueError::Empty)?, layer))
        .collect::<Result<_, _>>()?;
    let mut when = Vec::new();
    for c in &rule.when {
        compile_condition(c, layer, &mut when)?;
    }
    Ok(CompiledRule::Match {
        from,
        to,
        when: when.into(),
    })
}

/// Whether any rule of `policy` names something only visible in HTTP (methods, paths, hosts,
/// request principals, request `when` keys), which a node cannot see: at L4 an ALLOW rule with
/// one matches nothing and a DENY rule denies on its L4 part alone.
pub fn has_l7_rules(policy: &crate::model::policy::AuthorizationPolicy) -> bool {
    policy
        .rules
        .iter()
        .any(|r| rule_unsupported(r, Layer::L4).unwrap_or(false))
}

/// Whether the rule names something `layer` cannot evaluate: at L4 anything from HTTP, at L7
/// request principals and the JWT (or other non-header) `when` keys.
fn rule_unsupported(rule: &Rule, layer: Layer) -> Result<bool, ValueError> {
    let mut found = rule
        .from
        .iter()
        .any(|f| f.source.as_ref().is_some_and(Source::has_l7))
        || (layer == Layer::L4
            && rule
                .to
                .iter()
                .any(|t| t.operation.as_ref().is_some_and(Operation::has_l7)));
    for c in &rule.when {
        found |= matches!(classify(&c.key, layer)?, Key::Unsupported);
    }
    Ok(found)
}

/// A `when` key as one layer sees it.
enum Key<'k> {
    Connection(ConditionKey),
    /// `request.headers[name]`, at L7 only.
    Header(&'k str),
    Unsupported,
}

fn classify(key: &str, layer: Layer) -> Result<Key<'_>, ValueError> {
    match ConditionKey::parse(key)? {
        ConditionKey::L7 => Ok(match (layer, request_header_name(key)) {
            (Layer::L7, Some(name)) => Key::Header(name),
            _ => Key::Unsupported,
        }),
        k => Ok(Key::Connection(k)),
    }
}

/// The `name` of `request.headers[name]` (`ConditionKey::parse` has accepted the key).
fn request_header_name(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'))
        .filter(|n| !n.is_empty())
}

fn compile_source(s: &Source) -> Result<All, ValueError> {
    let mut checks = Vec::new();
    let principals = |v: &[String]| patterns(v.iter().map(|s| strip_scheme(s)), Values::Principal);
    let namespaces = |v: &[String]| patterns(v.iter().map(String::as_str), Values::Namespace);
    push(&mut checks, &s.principals, false, principals)?;
    push(&mut checks, &s.not_principals, true, principals)?;
    push(&mut checks, &s.namespaces, false, namespaces)?;
    push(&mut checks, &s.not_namespaces, true, namespaces)?;
    let ips = |v: &[String]| ip_blocks(v.iter().map(String::as_str), Values::SourceIp);
    push(&mut checks, &s.ip_blocks, false, ips)?;
    push(&mut checks, &s.not_ip_blocks, true, ips)?;
    push(&mut checks, &s.remote_ip_blocks, false, ips)?;
    push(&mut checks, &s.not_remote_ip_blocks, true, ips)?;
    Ok(checks.into())
}

/// At L4 only the ports; the HTTP fields are dropped (only DENY rules get here with them, see
/// `compile_rule`).
fn compile_operation(o: &Operation, layer: Layer) -> Result<All, ValueError> {
    let mut checks = Vec::new();
    push(&mut checks, &o.ports, false, ports)?;
    push(&mut checks, &o.not_ports, true, ports)?;
    if layer == Layer::L7 {
        let methods = |v: &[String]| patterns(v.iter().map(String::as_str), Values::Method);
        let paths = |v: &[String]| patterns(v.iter().map(String::as_str), Values::Path);
        let hosts = |v: &[String]| {
            v.iter()
                .map(|h| HostPattern::parse(h))
                .collect::<Result<_, _>>()
                .map(Values::Host)
        };
        push(&mut checks, &o.methods, false, methods)?;
        push(&mut checks, &o.not_methods, true, methods)?;
        push(&mut checks, &o.paths, false, paths)?;
        push(&mut checks, &o.not_paths, true, paths)?;
        push(&mut checks, &o.hosts, false, hosts)?;
        push(&mut checks, &o.not_hosts, true, hosts)?;
    }
    Ok(checks.into())
}

fn compile_condition(c: &Condition, layer: Layer, out: &mut Vec<Check>) -> Result<(), ValueError> {
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(ValueError::Empty);
    }
    let key = match classify(&c.key, layer)? {
        // Only DENY rules get here with an unsupported key: the layer cannot see the
        // attribute, so the condition is dropped (see `compile_rule`).
        Key::Unsupported => return Ok(()),
        Key::Header(name) => {
            let header = || {
                RequestHeader::parse(name).ok_or_else(|| ValueError::ConditionKey(c.key.clone()))
            };
            let compile = |v: &[Scalar]| -> Result<Values, ValueError> {
                let patterns = v
                    .iter()
                    .map(|s| StringPattern::parse(s.as_str()))
                    .collect::<Result<_, _>>()?;
                Ok(Values::Header {
                    header: header()?,
                    patterns,
                })
            };
            push(out, &c.values, false, compile)?;
            return push(out, &c.not_values, true, compile);
        }
        Key::Connection(k) => k,
    };
    let compile = |v: &[Scalar]| -> Result<Values, ValueError> {
        let strs = v.iter().map(Scalar::as_str);
        match key {
            ConditionKey::SourceIp | ConditionKey::RemoteIp => ip_blocks(strs, Values::SourceIp),
            ConditionKey::DestinationIp => ip_blocks(strs, Values::DestinationIp),
            ConditionKey::DestinationPort => ports(v),
            ConditionKey::SourcePrincipal => patterns(strs.map(strip_scheme), Values::Principal),
            ConditionKey::SourceNamespace => patterns(strs, Values::Namespace),
            ConditionKey::L7 => Err(ValueError::ConditionKey(c.key.clone())),
        }
    };
    push(out, &c.values, false, compile)?;
    push(out, &c.not_values, true, compile)
}

/// Adds a check for a non-empty field; an empty list is an absent field.
fn push<T>(
    out: &mut Vec<Check>,
    values: &[T],
    negate: bool,
    compile: impl Fn(&[T]) -> Result<Values, ValueError>,
) -> Result<(), ValueError> {
    if !values.is_empty() {
        out.push(Check {
            values: compile(values)?,
            negate,
        });
    }
    Ok(())
}

fn patterns<'s>(
    values: impl Iterator<Item = &'s str>,
    wrap: fn(Box<[StringPattern]>) -> Values,
) -> Result<Values, ValueError> {
    values
        .map(StringPattern::parse)
        .collect::<Result<_, _>>()
        .map(wrap)
}

fn ip_blocks<'s>(
    values: impl Iterator<Item = &'s str>,
    wrap: fn(Box<[IpNet]>) -> Values,
) -> Result<Values, ValueError> {
    values
        .map(|v| parse_ip_block(v).map(canonical_net))
        .collect::<Result<_, _>>()
        .map(wrap)
}

/// `::ffff:10.0.0.0/104` is how a v4 block reads in v6 notation; fold it so it matches the
/// canonical (IPv4) peer addresses.
fn canonical_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(n),
            None => n,
        },
        _ => n,
    }
}

fn ports(values: &[Scalar]) -> Result<Values, ValueError> {
    values
        .iter()
        .map(|v| parse_port(v.as_str()))
        .collect::<Result<_, _>>()
        .map(Values::DestinationPort)
}
