//! Typed parsing of the values a policy holds as text: IP blocks, ports, Istio string patterns
//! and `when` keys. Validation uses it to report errors; `authz` to build matchers.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why one value in a policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is neither an IP address nor a CIDR block")]
    IpBlock(String),
    #[error("{0:?} is not a port between 1 and 65535")]
    Port(String),
    #[error("{0:?}: `*` is only allowed alone, as a prefix (`*abc`) or as a suffix (`abc*`)")]
    Wildcard(String),
    #[error("unknown condition key {0:?}")]
    ConditionKey(String),
}

/// A CIDR block, or a plain address meaning just that address (/32 or /128). Host bits are
/// cleared (`10.1.2.3/8` is `10.0.0.0/8`), as Istio does.
pub fn parse_ip_block(s: &str) -> Result<IpNet, ValueError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| ValueError::IpBlock(s.to_owned()))
}

/// A destination port; Istio writes them as strings.
pub fn parse_port(s: &str) -> Result<u16, ValueError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ValueError::Port(s.to_owned())),
    }
}

/// Istio's string match for principals, namespaces and hosts: exact, `*` (present, non-empty),
/// `prefix*`, `*suffix`. Nothing else: `a*b` would silently match only the literal `a*b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringPattern {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty);
        }
        if s == "*" {
            return Ok(StringPattern::Present);
        }
        let (pattern, rest) = if let Some(rest) = s.strip_prefix('*') {
            (StringPattern::Suffix(rest.to_owned()), rest)
        } else if let Some(rest) = s.strip_suffix('*') {
            (StringPattern::Prefix(rest.to_owned()), rest)
        } else {
            (StringPattern::Exact(s.to_owned()), s)
        };
        if rest.contains('*') {
            return Err(ValueError::Wildcard(s.to_owned()));
        }
        Ok(pattern)
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringPattern::Exact(e) => value == e,
            StringPattern::Prefix(p) => value.starts_with(p.as_str()),
            StringPattern::Suffix(s) => value.ends_with(s.as_str()),
            StringPattern::Present => !value.is_empty(),
        }
    }
}

/// The `when` keys. Those the node can evaluate from the connection alone are named; everything
/// Istio knows beyond that (headers, JWT claims, SNI, ...) is [`ConditionKey::L7`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKey {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    L7,
}

impl ConditionKey {
    /// Refuses keys Istio does not know, so a misspelt key is an error and not a rule that never
    /// (or, in a DENY policy, always) matches.
    pub fn parse(key: &str) -> Result<Self, ValueError> {
        Ok(match key {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "request.auth.principal"
            | "request.auth.audiences"
            | "request.auth.presenter"
            | "connection.sni" => ConditionKey::L7,
            k if is_bracketed(k, "request.headers[")
                || is_bracketed(k, "request.auth.claims[")
                || k.starts_with("experimental.envoy.filters.") =>
            {
                ConditionKey::L7
            }
            _ => return Err(ValueError::ConditionKey(key.to_owned())),
        })
    }
}

fn is_bracketed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| !inner.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_value_parsers() {
        assert_eq!(parse_ip_block("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(
            parse_ip_block("fd00::1").unwrap().to_string(),
            "fd00::1/128"
        );
        assert_eq!(
            parse_ip_block("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(parse_ip_block("10.0.0").is_err());
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").is_err());
        assert_eq!(StringPattern::parse("*"), Ok(StringPattern::Present));
        assert_eq!(
            StringPattern::parse("a*"),
            Ok(StringPattern::Prefix("a".into()))
        );
        assert_eq!(
            StringPattern::parse("*a"),
            Ok(StringPattern::Suffix("a".into()))
        );
        assert!(StringPattern::parse("*a*").is_err());
        assert!(!StringPattern::Present.matches(""));
        assert_eq!(
            ConditionKey::parse("request.headers[x]"),
            Ok(ConditionKey::L7)
        );
        assert!(ConditionKey::parse("request.headers[]").is_err());
    }
}
