//! The request metadata of a CONNECT: where the client really is (`forwarded`), who it is
//! (`baggage`), and the trace it belongs to (`traceparent`).

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

/// The original client's SPIFFE id in a waypoint's CONNECT. Istio has no such header (its
/// destination sees the waypoint); weft's destination node uses it for L4 policy, but only
/// when the tunnel's own certificate is the waypoint's of the destination's namespace.
pub const ORIGINAL_PRINCIPAL: &str = "weft-original-principal";

/// `for="10.0.0.1:4321"` or `for="[fd00::1]:4321"`, as RFC 7239 wants ports and IPv6 quoted.
pub fn forwarded_for(addr: SocketAddr) -> HeaderValue {
    let v = match addr {
        SocketAddr::V4(a) => format!("for=\"{}:{}\"", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("for=\"[{}]:{}\"", a.ip(), a.port()),
    };
    // Formatted from numbers only, so it is always a valid header value.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// Reads the client address of the first `for=` element (port 0 when it has none). Anything
/// unparsable is `None`: the header is advisory, never a reason to refuse.
pub fn parse_forwarded_for(value: &HeaderValue) -> Option<SocketAddr> {
    let s = value.to_str().ok()?;
    let first = s.split(',').next()?;
    let param = first
        .split(';')
        .map(str::trim)
        .find(|p| p.len() > 4 && p[..4].eq_ignore_ascii_case("for="))?;
    let v = param[4..].trim_matches('"');
    if let Ok(sa) = v.parse::<SocketAddr>() {
        return Some(sa);
    }
    let ip = v
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(v);
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

/// Source workload metadata, W3C baggage with the keys Istio uses, so a receiving Istio node
/// labels our metrics the same way.
pub fn baggage(
    namespace: &str,
    workload: &str,
    service: &str,
    version: &str,
) -> Option<HeaderValue> {
    let v = format!(
        "k8s.namespace.name={namespace},k8s.pod.name={workload},service.name={service},service.version={version}"
    );
    HeaderValue::from_str(&v).ok()
}

/// Looks a key up in a baggage header.
pub fn baggage_get<'a>(value: &'a HeaderValue, key: &str) -> Option<&'a str> {
    value.to_str().ok()?.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.split(';').next().unwrap_or("").trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        for a in ["10.1.2.3:80", "[fd00::1]:443"] {
            let sa: SocketAddr = a.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(sa)), Some(sa));
        }
        let h = HeaderValue::from_static("by=x;For=192.0.2.60, for=10.0.0.1");
        assert_eq!(
            parse_forwarded_for(&h),
            Some("192.0.2.60:0".parse().unwrap())
        );
        let h = HeaderValue::from_static("for=\"[fd00::1]\"");
        assert_eq!(
            parse_forwarded_for(&h),
            Some("[fd00::1]:0".parse().unwrap())
        );
        assert_eq!(
            parse_forwarded_for(&HeaderValue::from_static("for=_hidden")),
            None
        );
    }

    #[test]
    fn baggage_keys() {
        let b = baggage("default", "sleep-1", "sleep", "v1").unwrap();
        assert_eq!(baggage_get(&b, "k8s.pod.name"), Some("sleep-1"));
        assert_eq!(baggage_get(&b, "service.version"), Some("v1"));
        assert_eq!(baggage_get(&b, "nope"), None);
    }
}
