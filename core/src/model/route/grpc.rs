//! `GRPCRoute`: its spec as Gateway API writes it, and the HTTP rules it means. A gRPC call is
//! an HTTP/2 POST to `/<package.Service>/<Method>`, so a method match is a path match and the
//! waypoint needs no second router.

use serde::{Deserialize, Serialize};

use super::{
    BackendRef, Filter, PathMatch, PathMatchType, RouteMatch, RouteRule, ValueMatch, ValueMatchType,
};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
}

/// At least one of `service` and `method`; both are exact names or regular expressions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// Why a gRPC rule cannot be expressed (the fields are named as the user wrote them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerError {
    pub path: String,
    pub message: String,
}

/// The HTTP rule a gRPC rule means. Redirects and rewrites do not exist for gRPC; a filter of
/// those kinds is refused rather than dropped.
pub fn lower(rule: &GrpcRouteRule) -> Result<RouteRule, LowerError> {
    for (i, f) in rule.filters.iter().enumerate() {
        use super::FilterType::*;
        if matches!(f.kind, RequestRedirect | UrlRewrite) {
            return Err(LowerError {
                path: format!("filters[{i}].type"),
                message: format!("{:?} is not a GRPCRoute filter", f.kind),
            });
        }
    }
    let mut matches = Vec::with_capacity(rule.matches.len());
    for (i, m) in rule.matches.iter().enumerate() {
        let path = match &m.method {
            None => None,
            Some(mm) => Some(method_path(mm).map_err(|message| LowerError {
                path: format!("matches[{i}].method"),
                message,
            })?),
        };
        matches.push(RouteMatch {
            path,
            headers: m.headers.clone(),
            query_params: Vec::new(),
            // gRPC is always POST; matching it would only hide a misrouted non-gRPC request.
            method: None,
        });
    }
    Ok(RouteRule {
        name: rule.name.clone(),
        matches,
        filters: rule.filters.clone(),
        backend_refs: rule.backend_refs.clone(),
        timeouts: None,
        retry: None,
    })
}

fn method_path(m: &GrpcMethodMatch) -> Result<PathMatch, String> {
    let (service, method) = (m.service.as_deref(), m.method.as_deref());
    if service.is_none() && method.is_none() {
        return Err("needs a service, a method or both".into());
    }
    match m.kind {
        ValueMatchType::Exact => {
            for v in [service, method].into_iter().flatten() {
                if v.is_empty() || v.contains('/') {
                    return Err(format!("{v:?} is not a gRPC service or method name"));
                }
            }
            Ok(match (service, method) {
                (Some(s), Some(me)) => PathMatch {
                    kind: PathMatchType::Exact,
                    value: format!("/{s}/{me}"),
                },
                // Path prefixes match whole segments: `/pkg.Svc` matches `/pkg.Svc/M` only.
                (Some(s), None) => PathMatch {
                    kind: PathMatchType::PathPrefix,
                    value: format!("/{s}"),
                },
                (None, me) => PathMatch {
                    kind: PathMatchType::RegularExpression,
                    value: format!("/[^/]+/{}", regex_escape(me.unwrap_or_default())),
                },
            })
        }
        ValueMatchType::RegularExpression => Ok(PathMatch {
            kind: PathMatchType::RegularExpression,
            value: format!(
                "/(?:{})/(?:{})",
                service.unwrap_or("[^/]+"),
                method.unwrap_or("[^/]+")
            ),
        }),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
