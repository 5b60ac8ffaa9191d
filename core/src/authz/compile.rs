//! Turns a policy into matchers once per reload, so that the per-connection path compares
//! integers, CIDRs and pre-split string patterns without parsing or allocating.
//!
//! This is also where the node's L4 view of Istio's L7 fields is decided (see the module docs
//! of `authz`), and where a policy that somehow skipped validation is made to fail closed.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::policy::{
    Action, AuthorizationPolicy, Condition, ConditionKey, Operation, Rule, Scalar, Source,
    StringPattern, ValueError, WorkloadSelector, parse_ip_block, parse_port,
};

use super::ConnectionInfo;

/// The connection as the matchers read it: the principal without its `spiffe://` scheme (the
/// form policies are written in), addresses with IPv4-mapped IPv6 folded back to IPv4.
pub(super) struct Peer<'a> {
    principal: Option<&'a str>,
    namespace: Option<&'a str>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    destination_port: u16,
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
}

impl Values {
    /// Whether the attribute takes any of the values. An absent identity takes none, which is
    /// what makes `notPrincipals: ["*"]` select plaintext peers, as in Istio.
    fn any(&self, p: &Peer<'_>) -> bool {
        match self {
            Values::Principal(ms) => p.principal.is_some_and(|v| ms.iter().any(|m| m.matches(v))),
            Values::Namespace(ms) => p.namespace.is_some_and(|v| ms.iter().any(|m| m.matches(v))),
            Values::SourceIp(nets) => nets.iter().any(|n| n.contains(&p.source_ip)),
            Values::DestinationIp(nets) => nets.iter().any(|n| n.contains(&p.destination_ip)),
            Values::DestinationPort(ports) => ports.contains(&p.destination_port),
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
    /// An ALLOW or AUDIT rule the node cannot evaluate (it names L7 attributes), or an invalid
    /// one in such a policy.
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

/// A policy ready for per-connection evaluation.
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

/// Compiles one policy. Rules that do not compile (the loader validates, so only a caller that
/// skipped validation gets here) fail closed: they deny everything in a DENY policy and allow
/// nothing in an ALLOW policy.
pub(super) fn compile(policy: &AuthorizationPolicy) -> CompiledPolicy {
    let key: Arc<str> = Arc::from(policy.key());
    let rules = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| match compile_rule(rule, policy.action) {
            Ok(r) => {
                if matches!(r, CompiledRule::Never) {
                    tracing::warn!(
                        policy = %key, rule = i, action = %policy.action,
                        "rule uses HTTP attributes the node cannot see; it matches nothing at L4"
                    );
                } else if policy.action == Action::Deny && rule_has_l7(rule).unwrap_or(false) {
                    tracing::info!(
                        policy = %key, rule = i,
                        "DENY rule uses HTTP attributes; enforcing its L4 part alone"
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

/// ALLOW and AUDIT rules naming L7 attributes match nothing (allowing on a partial match would
/// let through what the user meant to restrict). DENY rules drop their L7 parts instead, so
/// they deny the L4 traffic they otherwise select: wider than intended, never narrower.
fn compile_rule(rule: &Rule, action: Action) -> Result<CompiledRule, ValueError> {
    if action != Action::Deny && rule_has_l7(rule)? {
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
        .map(|t| compile_operation(t.operation.as_ref().ok_or(ValueError::Empty)?))
        .collect::<Result<_, _>>()?;
    let mut when = Vec::new();
    for c in &rule.when {
        compile_condition(c, &mut when)?;
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
    policy.rules.iter().any(|r| rule_has_l7(r).unwrap_or(false))
}

fn rule_has_l7(rule: &Rule) -> Result<bool, ValueError> {
    let mut l7 = rule
        .from
        .iter()
        .any(|f| f.source.as_ref().is_some_and(Source::has_l7))
        || rule
            .to
            .iter()
            .any(|t| t.operation.as_ref().is_some_and(Operation::has_l7));
    for c in &rule.when {
        l7 |= ConditionKey::parse(&c.key)? == ConditionKey::L7;
    }
    Ok(l7)
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

fn compile_operation(o: &Operation) -> Result<All, ValueError> {
    let mut checks = Vec::new();
    push(&mut checks, &o.ports, false, ports)?;
    push(&mut checks, &o.not_ports, true, ports)?;
    Ok(checks.into())
}

fn compile_condition(c: &Condition, out: &mut Vec<Check>) -> Result<(), ValueError> {
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(ValueError::Empty);
    }
    let key = ConditionKey::parse(&c.key)?;
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
    if key == ConditionKey::L7 {
        // Only DENY rules get here with an L7 key: the node cannot see the attribute, so the
        // condition is dropped (see `compile_rule`).
        return Ok(());
    }
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
