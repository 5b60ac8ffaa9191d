//! `Route::validate`: every problem in a route with its field path, so a user sees all their
//! mistakes at once. What is checked here is what the waypoint would otherwise have to guess
//! at per request: regular expressions compile, header names are headers, a prefix rewrite
//! has a prefix to replace, durations parse.

use http::{HeaderName, HeaderValue, Method};

use super::{
    BackendRef, Filter, FilterType, HeaderModifier, PathMatchType, PathModifier, PathModifierType,
    Route, RouteRule, ValueMatch, ValueMatchType, parse_duration,
};

/// One problem, `path` relative to the route (`rules[0].matches[1].path.value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Errors(Vec<RouteError>);

impl Errors {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(RouteError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// The most retries one request may cause; more only multiplies load on a failing backend.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

impl Route {
    pub fn validate(&self) -> Vec<RouteError> {
        let mut e = Errors::default();
        if self.name.is_empty() {
            e.err("name", "must not be empty");
        }
        if self.namespace.is_empty() {
            e.err("namespace", "must not be empty");
        }
        for (i, p) in self.parent_refs.iter().enumerate() {
            if !p.is_service() {
                // A Gateway parent belongs to whichever controller runs that Gateway.
                continue;
            }
            if p.name.is_empty() {
                e.err(format!("parentRefs[{i}].name"), "must not be empty");
            }
            if p.namespace.as_deref().is_some_and(|n| n != self.namespace) {
                e.err(
                    format!("parentRefs[{i}].namespace"),
                    "routes for another namespace's Service (consumer routes) are not supported yet; \
                     put the route in the Service's namespace",
                );
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule_checks(&format!("rules[{i}]"), rule, &self.namespace, &mut e);
        }
        e.0
    }
}

fn rule_checks(at: &str, rule: &RouteRule, namespace: &str, e: &mut Errors) {
    let mut prefix_only = true;
    for (i, m) in rule.matches.iter().enumerate() {
        let at = format!("{at}.matches[{i}]");
        if let Some(p) = &m.path {
            match p.kind {
                PathMatchType::Exact | PathMatchType::PathPrefix => {
                    if !p.value.starts_with('/') {
                        e.err(format!("{at}.path.value"), "must start with /");
                    }
                    if p.kind == PathMatchType::Exact {
                        prefix_only = false;
                    }
                }
                PathMatchType::RegularExpression => {
                    prefix_only = false;
                    if let Err(err) = regex::Regex::new(&p.value) {
                        e.err(
                            format!("{at}.path.value"),
                            format!("invalid regular expression: {err}"),
                        );
                    }
                }
            }
        }
        for (j, h) in m.headers.iter().enumerate() {
            value_match(&format!("{at}.headers[{j}]"), h, true, e);
        }
        for (j, q) in m.query_params.iter().enumerate() {
            value_match(&format!("{at}.queryParams[{j}]"), q, false, e);
        }
        if let Some(method) = &m.method
            && Method::from_bytes(method.as_bytes()).is_err()
        {
            e.err(
                format!("{at}.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
    let kinds: Vec<FilterType> = rule.filters.iter().map(|f| f.kind).collect();
    if kinds.contains(&FilterType::RequestRedirect) && kinds.contains(&FilterType::UrlRewrite) {
        e.err(
            format!("{at}.filters"),
            "RequestRedirect and URLRewrite cannot be in one rule",
        );
    }
    if kinds.contains(&FilterType::RequestRedirect) && !rule.backend_refs.is_empty() {
        e.err(
            format!("{at}.backendRefs"),
            "a rule with RequestRedirect answers itself and cannot have backendRefs",
        );
    }
    for (i, f) in rule.filters.iter().enumerate() {
        filter(&format!("{at}.filters[{i}]"), f, prefix_only, namespace, e);
    }
    for (i, b) in rule.backend_refs.iter().enumerate() {
        backend(&format!("{at}.backendRefs[{i}]"), b, namespace, e);
        for (j, f) in b.filters.iter().enumerate() {
            let at = format!("{at}.backendRefs[{i}].filters[{j}]");
            if !matches!(
                f.kind,
                FilterType::RequestHeaderModifier | FilterType::ResponseHeaderModifier
            ) {
                e.err(
                    format!("{at}.type"),
                    "only header modifiers are supported on a backendRef",
                );
            }
            filter(&at, f, prefix_only, namespace, e);
        }
    }
    let mut request = None;
    if let Some(t) = &rule.timeouts {
        for (field, v) in [
            ("request", &t.request),
            ("backendRequest", &t.backend_request),
        ] {
            if let Some(v) = v {
                match parse_duration(v) {
                    Some(d) if field == "request" => request = Some(d),
                    Some(d) => {
                        if request.is_some_and(|r| !r.is_zero() && d > r) {
                            e.err(
                                format!("{at}.timeouts.backendRequest"),
                                "must not be longer than timeouts.request",
                            );
                        }
                    }
                    None => e.err(
                        format!("{at}.timeouts.{field}"),
                        format!("{v:?} is not a duration (e.g. 10s, 500ms, 1m30s)"),
                    ),
                }
            }
        }
    }
    if let Some(r) = &rule.retry {
        if r.attempts.is_some_and(|a| a > MAX_RETRY_ATTEMPTS) {
            e.err(
                format!("{at}.retry.attempts"),
                format!("at most {MAX_RETRY_ATTEMPTS}"),
            );
        }
        for (i, c) in r.codes.iter().enumerate() {
            if !(400..=599).contains(c) {
                e.err(
                    format!("{at}.retry.codes[{i}]"),
                    "must be between 400 and 599",
                );
            }
        }
        if let Some(b) = &r.backoff
            && parse_duration(b).is_none()
        {
            e.err(
                format!("{at}.retry.backoff"),
                format!("{b:?} is not a duration"),
            );
        }
    }
}

fn value_match(at: &str, m: &ValueMatch, header: bool, e: &mut Errors) {
    if m.name.is_empty() {
        e.err(format!("{at}.name"), "must not be empty");
    } else if header && HeaderName::from_bytes(m.name.as_bytes()).is_err() {
        e.err(
            format!("{at}.name"),
            format!("{:?} is not a header name", m.name),
        );
    }
    if m.kind == ValueMatchType::RegularExpression
        && let Err(err) = regex::Regex::new(&m.value)
    {
        e.err(
            format!("{at}.value"),
            format!("invalid regular expression: {err}"),
        );
    }
}

fn filter(at: &str, f: &Filter, prefix_only: bool, namespace: &str, e: &mut Errors) {
    let set = [
        (
            FilterType::RequestHeaderModifier,
            f.request_header_modifier.is_some(),
        ),
        (
            FilterType::ResponseHeaderModifier,
            f.response_header_modifier.is_some(),
        ),
        (FilterType::RequestMirror, f.request_mirror.is_some()),
        (FilterType::RequestRedirect, f.request_redirect.is_some()),
        (FilterType::UrlRewrite, f.url_rewrite.is_some()),
    ];
    for (kind, present) in set {
        if (kind == f.kind) != present {
            let field = field_name(kind);
            let message = if present {
                format!("{field} is set, but type is {:?}", f.kind)
            } else {
                format!("type {:?} needs {field}", f.kind)
            };
            e.err(format!("{at}.{field}"), message);
        }
    }
    for (field, m) in [
        ("requestHeaderModifier", &f.request_header_modifier),
        ("responseHeaderModifier", &f.response_header_modifier),
    ] {
        if let Some(m) = m {
            header_modifier(&format!("{at}.{field}"), m, e);
        }
    }
    if let Some(m) = &f.request_mirror {
        let b = &m.backend_ref;
        backend_object(
            &format!("{at}.requestMirror.backendRef"),
            (
                b.group.as_deref(),
                b.kind.as_deref(),
                b.namespace.as_deref(),
                b.port,
            ),
            &b.name,
            namespace,
            e,
        );
        if m.percent.is_some_and(|p| p > 100) {
            e.err(
                format!("{at}.requestMirror.percent"),
                "must be between 0 and 100",
            );
        }
    }
    if let Some(r) = &f.request_redirect {
        let at = format!("{at}.requestRedirect");
        if let Some(s) = &r.scheme
            && s != "http"
            && s != "https"
        {
            e.err(format!("{at}.scheme"), "must be http or https");
        }
        if let Some(c) = r.status_code
            && c != 301
            && c != 302
        {
            e.err(format!("{at}.statusCode"), "must be 301 or 302");
        }
        if let Some(h) = &r.hostname
            && HeaderValue::from_str(h).is_err()
        {
            e.err(format!("{at}.hostname"), "not a hostname");
        }
        if let Some(p) = &r.path {
            path_modifier(&format!("{at}.path"), p, prefix_only, e);
        }
    }
    if let Some(r) = &f.url_rewrite {
        let at = format!("{at}.urlRewrite");
        if let Some(h) = &r.hostname
            && HeaderValue::from_str(h).is_err()
        {
            e.err(format!("{at}.hostname"), "not a hostname");
        }
        if let Some(p) = &r.path {
            path_modifier(&format!("{at}.path"), p, prefix_only, e);
        }
    }
}

fn field_name(kind: FilterType) -> &'static str {
    match kind {
        FilterType::RequestHeaderModifier => "requestHeaderModifier",
        FilterType::ResponseHeaderModifier => "responseHeaderModifier",
        FilterType::RequestMirror => "requestMirror",
        FilterType::RequestRedirect => "requestRedirect",
        FilterType::UrlRewrite => "urlRewrite",
    }
}

fn header_modifier(at: &str, m: &HeaderModifier, e: &mut Errors) {
    for (list, headers) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in headers.iter().enumerate() {
            if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                e.err(
                    format!("{at}.{list}[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                );
            }
            if HeaderValue::from_str(&h.value).is_err() {
                e.err(
                    format!("{at}.{list}[{i}].value"),
                    "not a valid header value",
                );
            }
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            e.err(
                format!("{at}.remove[{i}]"),
                format!("{name:?} is not a header name"),
            );
        }
    }
}

fn path_modifier(at: &str, p: &PathModifier, prefix_only: bool, e: &mut Errors) {
    let (value, field) = match p.kind {
        PathModifierType::ReplaceFullPath => (&p.replace_full_path, "replaceFullPath"),
        PathModifierType::ReplacePrefixMatch => {
            if !prefix_only {
                e.err(
                    format!("{at}.type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                );
            }
            (&p.replace_prefix_match, "replacePrefixMatch")
        }
    };
    match value {
        None => e.err(
            format!("{at}.{field}"),
            format!("type {:?} needs {field}", p.kind),
        ),
        Some(v) if !v.starts_with('/') => e.err(format!("{at}.{field}"), "must start with /"),
        Some(_) => {}
    }
}

fn backend(at: &str, b: &BackendRef, namespace: &str, e: &mut Errors) {
    backend_object(
        at,
        (
            b.group.as_deref(),
            b.kind.as_deref(),
            b.namespace.as_deref(),
            b.port,
        ),
        &b.name,
        namespace,
        e,
    );
    if b.weight.is_some_and(|w| w > 1_000_000) {
        e.err(format!("{at}.weight"), "must be between 0 and 1000000");
    }
}

type ObjectRef<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<u16>,
);

fn backend_object(at: &str, r: ObjectRef<'_>, name: &str, namespace: &str, e: &mut Errors) {
    let (group, kind, ns, port) = r;
    if !matches!(group, None | Some("") | Some("core")) || !matches!(kind, None | Some("Service")) {
        e.err(format!("{at}.kind"), "only Services can be backends");
    }
    if name.is_empty() {
        e.err(format!("{at}.name"), "must not be empty");
    }
    if ns.is_some_and(|n| n != namespace) {
        e.err(
            format!("{at}.namespace"),
            "backends in another namespace need a ReferenceGrant, which weft does not support yet",
        );
    }
    if port.is_none() {
        e.err(format!("{at}.port"), "a Service backend needs a port");
    }
}
