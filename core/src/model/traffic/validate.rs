//! `TrafficPolicy::validate`: every problem with its field path (`spec.faults[0].abort`), so
//! the waypoint never has to guess per request: durations parse, percentages are
//! percentages, a hash names a header, an abort is one status.

use http::HeaderName;

use super::{Fault, HeaderMatchType, LoadBalancerType, TrafficPolicy, grpc_code};
use crate::model::route::parse_duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficError {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Errors(Vec<TrafficError>);

impl Errors {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(TrafficError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: String, v: Option<&str>) {
        if let Some(v) = v
            && parse_duration(v).is_none()
        {
            self.err(
                path,
                format!("{v:?} is not a duration (e.g. 100ms, 10s, 1m30s)"),
            );
        }
    }

    fn percentage(&mut self, path: String, v: Option<f64>) {
        if let Some(p) = v
            && !(0.0..=100.0).contains(&p)
        {
            self.err(path, format!("{p} is not a percentage from 0 to 100"));
        }
    }

    fn header(&mut self, path: String, name: &str) {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.err(path, format!("{name:?} is not an HTTP header name"));
        }
    }
}

impl TrafficPolicy {
    pub fn validate(&self) -> Vec<TrafficError> {
        let mut e = Errors::default();
        if self.name.is_empty() {
            e.err("name", "must not be empty");
        }
        if self.namespace.is_empty() {
            e.err("namespace", "must not be empty");
        }
        let spec = &self.spec;
        if spec.target_refs.is_empty() {
            e.err("spec.targetRefs", "must name at least one Service");
        }
        for (i, t) in spec.target_refs.iter().enumerate() {
            let at = format!("spec.targetRefs[{i}]");
            if t.kind != "Service" || !matches!(t.group.as_str(), "" | "core") {
                e.err(
                    format!("{at}.kind"),
                    format!(
                        "{}/{} is not supported: a traffic policy attaches to a Service (group \"\")",
                        t.group, t.kind
                    ),
                );
            }
            if t.name.is_empty() {
                e.err(format!("{at}.name"), "must not be empty");
            }
            if t.namespace.as_deref().is_some_and(|n| n != self.namespace) {
                e.err(
                    format!("{at}.namespace"),
                    "a policy attaches only to Services in its own namespace",
                );
            }
        }
        if let Some(lb) = &spec.load_balancer {
            match (&lb.kind, &lb.consistent_hash) {
                (LoadBalancerType::ConsistentHash, None) => e.err(
                    "spec.loadBalancer.consistentHash",
                    "required when type is ConsistentHash",
                ),
                (LoadBalancerType::ConsistentHash, Some(h)) => e.header(
                    "spec.loadBalancer.consistentHash.httpHeaderName".into(),
                    &h.http_header_name,
                ),
                (_, Some(_)) => e.err(
                    "spec.loadBalancer.consistentHash",
                    "only allowed when type is ConsistentHash",
                ),
                (_, None) => {}
            }
        }
        if let Some(p) = &spec.connection_pool {
            for (field, v) in [
                ("maxConnections", p.max_connections),
                ("maxRequests", p.max_requests),
            ] {
                if v == Some(0) {
                    e.err(
                        format!("spec.connectionPool.{field}"),
                        "must be at least 1 (leave it out for no limit)",
                    );
                }
            }
            e.duration(
                "spec.connectionPool.idleTimeout".into(),
                p.idle_timeout.as_deref(),
            );
        }
        if let Some(o) = &spec.outlier_detection {
            for (field, v) in [
                ("interval", &o.interval),
                ("baseEjectionTime", &o.base_ejection_time),
            ] {
                e.duration(format!("spec.outlierDetection.{field}"), v.as_deref());
                if v.as_deref()
                    .and_then(parse_duration)
                    .is_some_and(|d| d.is_zero())
                {
                    e.err(format!("spec.outlierDetection.{field}"), "must not be zero");
                }
            }
            if o.max_ejection_percent.is_some_and(|p| p > 100) {
                e.err(
                    "spec.outlierDetection.maxEjectionPercent",
                    "is a percentage from 0 to 100",
                );
            }
        }
        for (i, f) in spec.faults.iter().enumerate() {
            fault(&mut e, &format!("spec.faults[{i}]"), f);
        }
        for (i, r) in spec.rate_limits.iter().enumerate() {
            let at = format!("spec.rateLimits[{i}]");
            if r.max_tokens == 0 {
                e.err(format!("{at}.maxTokens"), "must be at least 1");
            }
            if r.tokens_per_fill == Some(0) {
                e.err(format!("{at}.tokensPerFill"), "must be at least 1");
            }
            match parse_duration(&r.fill_interval) {
                None => e.duration(format!("{at}.fillInterval"), Some(&r.fill_interval)),
                Some(d) if d.as_millis() < 1 => {
                    e.err(format!("{at}.fillInterval"), "must be at least 1ms")
                }
                Some(_) => {}
            }
            for (j, name) in r.routes.iter().enumerate() {
                if name.is_empty() || name.contains('/') {
                    e.err(
                        format!("{at}.routes[{j}]"),
                        "the name of a route in the policy's namespace",
                    );
                }
            }
        }
        e.0
    }
}

fn fault(e: &mut Errors, at: &str, f: &Fault) {
    if f.delay.is_none() && f.abort.is_none() {
        e.err(at.to_owned(), "needs a delay, an abort or both");
    }
    if let Some(m) = &f.matches {
        for (j, h) in m.headers.iter().enumerate() {
            let hat = format!("{at}.match.headers[{j}]");
            e.header(format!("{hat}.name"), &h.name);
            if h.kind == HeaderMatchType::RegularExpression
                && let Err(err) = regex::Regex::new(&h.value)
            {
                e.err(
                    format!("{hat}.value"),
                    format!("not a regular expression: {err}"),
                );
            }
        }
    }
    if let Some(d) = &f.delay {
        e.duration(format!("{at}.delay.fixedDelay"), Some(&d.fixed_delay));
        e.percentage(format!("{at}.delay.percentage"), d.percentage);
    }
    if let Some(a) = &f.abort {
        match (a.http_status, &a.grpc_status) {
            (Some(_), Some(_)) | (None, None) => e.err(
                format!("{at}.abort"),
                "exactly one of httpStatus and grpcStatus",
            ),
            (Some(s), None) if !(200..=599).contains(&s) => e.err(
                format!("{at}.abort.httpStatus"),
                format!("{s} is not an HTTP status from 200 to 599"),
            ),
            (None, Some(g)) if grpc_code(g).is_none_or(|c| c == 0) => e.err(
                format!("{at}.abort.grpcStatus"),
                format!("{g:?} is not a gRPC error status (e.g. UNAVAILABLE or 14)"),
            ),
            _ => {}
        }
        e.percentage(format!("{at}.abort.percentage"), a.percentage);
    }
}
