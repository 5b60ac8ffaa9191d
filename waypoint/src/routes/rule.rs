//! One compiled route rule: its filters, weighted backends, timeouts and retry policy, ready
//! for the per-request layers to apply without parsing anything.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tower::retry::budget::TpsBudget;
use weft_core::model::route::{
    BackendRef, Filter, FilterType, HeaderModifier, RequestRedirect, RouteKind, RouteRule,
    UrlRewrite, parse_duration,
};

/// A Service and port requests are sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BackendTarget {
    /// Shared: a target is cloned into every request it is chosen for.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: u16,
}

impl std::fmt::Display for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`, names and values parsed once.
#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn compile(m: &HeaderModifier) -> Self {
        let pairs = |list: &[weft_core::model::route::Header]| {
            list.iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        HeaderValue::from_str(&h.value).ok()?,
                    ))
                })
                .collect()
        };
        HeaderOps {
            set: pairs(&m.set),
            add: pairs(&m.add),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Set, then add, then remove: the order the spec gives.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

#[derive(Debug)]
pub struct WeightedBackend {
    pub target: BackendTarget,
    pub weight: u32,
    pub request_headers: Vec<HeaderOps>,
    pub response_headers: Vec<HeaderOps>,
}

#[derive(Debug)]
pub struct Mirror {
    pub target: BackendTarget,
    /// 0-100.
    pub percent: u32,
}

#[derive(Debug)]
pub struct RetryPolicy {
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: u32,
    pub backoff: Duration,
    /// Shared by every request of the rule: retries may add at most a fifth to the load the
    /// rule's requests make (plus a floor), so a failing backend is not hammered. Carried
    /// over when the table is rebuilt (see `RouteTable::build`).
    pub budget: Arc<TpsBudget>,
}

/// Retries may add this share of the requests over the last ten seconds...
const RETRY_BUDGET_RATIO: f32 = 0.2;
/// ...and at least this many per second, so that a quiet rule can still retry.
const RETRY_BUDGET_MIN_PER_SECOND: u32 = 5;
/// Envoy's default retry backoff base.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// A fresh retry budget: over the last ten seconds, a fifth of the requests plus five a second.
pub fn new_budget() -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        RETRY_BUDGET_MIN_PER_SECOND,
        RETRY_BUDGET_RATIO,
    ))
}

#[derive(Debug)]
pub struct Rule {
    /// `namespace/name` of its route.
    pub route: String,
    pub kind: RouteKind,
    pub index: usize,
    /// `namespace/name.rules[index]`, as the access log and spans name it (made once).
    pub log_name: Arc<str>,
    pub request_headers: Vec<HeaderOps>,
    pub response_headers: Vec<HeaderOps>,
    pub rewrite: Option<UrlRewrite>,
    pub redirect: Option<RequestRedirect>,
    pub mirrors: Vec<Mirror>,
    pub backends: Vec<WeightedBackend>,
    pub total_weight: u64,
    /// Whole request, retries included (zero: none).
    pub request_timeout: Option<Duration>,
    /// One attempt.
    pub backend_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

fn timeout(v: Option<&String>) -> Option<Duration> {
    v.and_then(|s| parse_duration(s)).filter(|d| !d.is_zero())
}

fn target(namespace: &str, name: &str, port: Option<u16>, default_port: u16) -> BackendTarget {
    BackendTarget {
        namespace: Arc::from(namespace),
        name: Arc::from(name),
        port: port.unwrap_or(default_port),
    }
}

fn headers_of(filters: &[Filter], kind: FilterType) -> Vec<HeaderOps> {
    filters
        .iter()
        .filter(|f| f.kind == kind)
        .filter_map(|f| match kind {
            FilterType::RequestHeaderModifier => f.request_header_modifier.as_ref(),
            FilterType::ResponseHeaderModifier => f.response_header_modifier.as_ref(),
            _ => None,
        })
        .map(HeaderOps::compile)
        .collect()
}

impl Rule {
    pub fn compile(
        route: String,
        kind: RouteKind,
        namespace: &str,
        index: usize,
        r: &RouteRule,
        service_port: u16,
        budget: impl FnOnce() -> Arc<TpsBudget>,
    ) -> Arc<Self> {
        let backend = |b: &BackendRef| WeightedBackend {
            target: target(namespace, &b.name, b.port, service_port),
            weight: b.weight(),
            request_headers: headers_of(&b.filters, FilterType::RequestHeaderModifier),
            response_headers: headers_of(&b.filters, FilterType::ResponseHeaderModifier),
        };
        let backends: Vec<WeightedBackend> = r.backend_refs.iter().map(backend).collect();
        let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
        let retry = r.retry.as_ref().map(|p| RetryPolicy {
            codes: p.codes.clone(),
            attempts: p.attempts.unwrap_or(1),
            backoff: p
                .backoff
                .as_deref()
                .and_then(parse_duration)
                .unwrap_or(DEFAULT_BACKOFF),
            budget: budget(),
        });
        let t = r.timeouts.as_ref();
        Arc::new(Rule {
            log_name: Arc::from(format!("{route}.rules[{index}]")),
            route,
            kind,
            index,
            request_headers: headers_of(&r.filters, FilterType::RequestHeaderModifier),
            response_headers: headers_of(&r.filters, FilterType::ResponseHeaderModifier),
            rewrite: r.filters.iter().find_map(|f| f.url_rewrite.clone()),
            redirect: r.filters.iter().find_map(|f| f.request_redirect.clone()),
            mirrors: r
                .filters
                .iter()
                .filter_map(|f| f.request_mirror.as_ref())
                .map(|m| Mirror {
                    target: target(
                        namespace,
                        &m.backend_ref.name,
                        m.backend_ref.port,
                        service_port,
                    ),
                    percent: m.percent.unwrap_or(100).min(100),
                })
                .collect(),
            backends,
            total_weight,
            request_timeout: t.and_then(|t| timeout(t.request.as_ref())),
            backend_timeout: t.and_then(|t| timeout(t.backend_request.as_ref())),
            retry,
        })
    }

    /// A backend by weight; `None` when the rule has none with a weight above zero.
    /// A backend by weight: its index in `backends`.
    pub fn pick_backend(&self) -> Option<usize> {
        if self.total_weight == 0 {
            return None;
        }
        let mut n = fastrand::u64(0..self.total_weight);
        for (i, b) in self.backends.iter().enumerate() {
            let w = u64::from(b.weight);
            if n < w {
                return Some(i);
            }
            n -= w;
        }
        None
    }
}

/// What `/config_dump` shows of a rule.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleDump {
    route: String,
    kind: &'static str,
    rule: usize,
    backends: Vec<(String, u32)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_timeout_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<(u32, Vec<u16>)>,
    redirect: bool,
    rewrite: bool,
    mirrors: Vec<String>,
}

impl Rule {
    pub fn dump(&self) -> RuleDump {
        RuleDump {
            route: self.route.clone(),
            kind: self.kind.as_str(),
            rule: self.index,
            backends: self
                .backends
                .iter()
                .map(|b| (b.target.to_string(), b.weight))
                .collect(),
            request_timeout_ms: self.request_timeout.map(|d| d.as_millis()),
            backend_timeout_ms: self.backend_timeout.map(|d| d.as_millis()),
            retry: self.retry.as_ref().map(|r| (r.attempts, r.codes.clone())),
            redirect: self.redirect.is_some(),
            rewrite: self.rewrite.is_some(),
            mirrors: self.mirrors.iter().map(|m| m.target.to_string()).collect(),
        }
    }
}
