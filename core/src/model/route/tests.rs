use std::time::Duration;

use super::grpc::{GrpcMethodMatch, GrpcRouteMatch, GrpcRouteRule, lower};
use super::*;

fn route(yaml: &str) -> Route {
    serde_yaml_ng::from_str(yaml).expect("test route parses")
}

#[test]
fn gateway_api_durations() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    for bad in ["", "10", "s", "1.5s", "-1s", "10 s", "123456s"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn a_valid_mesh_route_has_no_errors() {
    let r = route(
        r#"
name: web
namespace: web
parentRefs: [{group: "", kind: Service, name: web, port: 80}]
rules:
- matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-v, value: "2"}], method: GET}]
  filters:
  - type: URLRewrite
    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
  - type: RequestHeaderModifier
    requestHeaderModifier: {set: [{name: x-a, value: b}], remove: [x-c]}
  backendRefs: [{name: web-v2, port: 80, weight: 10}]
  timeouts: {request: 2s, backendRequest: 500ms}
  retry: {codes: [503], attempts: 2, backoff: 50ms}
"#,
    );
    assert_eq!(r.validate(), vec![]);
    assert_eq!(
        r.service_parents().collect::<Vec<_>>(),
        vec![("web", "web", Some(80))]
    );
}

#[test]
fn every_mistake_is_named_by_its_field() {
    let r = route(
        r#"
name: web
namespace: web
parentRefs: [{kind: Service, name: web, namespace: other}]
rules:
- matches: [{path: {type: RegularExpression, value: "(unclosed"}, headers: [{name: "bad header", value: x}]}]
  filters:
  - type: RequestRedirect
    urlRewrite: {hostname: x}
  backendRefs: [{name: v1}, {name: v2, port: 80, namespace: elsewhere}]
  timeouts: {request: 1s, backendRequest: 2s}
  retry: {codes: [200], attempts: 11, backoff: soon}
"#,
    );
    let paths: Vec<String> = r.validate().into_iter().map(|e| e.path).collect();
    for want in [
        "parentRefs[0].namespace",
        "rules[0].matches[0].path.value",
        "rules[0].matches[0].headers[0].name",
        "rules[0].filters[0].requestRedirect",
        "rules[0].filters[0].urlRewrite",
        "rules[0].backendRefs",
        "rules[0].backendRefs[0].port",
        "rules[0].backendRefs[1].namespace",
        "rules[0].timeouts.backendRequest",
        "rules[0].retry.attempts",
        "rules[0].retry.codes[0]",
        "rules[0].retry.backoff",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing from {paths:?}"
        );
    }
}

#[test]
fn a_prefix_rewrite_needs_prefix_matches() {
    let r = route(
        r#"
name: web
namespace: web
parentRefs: [{kind: Service, name: web}]
rules:
- matches: [{path: {type: Exact, value: /a}}]
  filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]
  backendRefs: [{name: web, port: 80}]
"#,
    );
    let errors = r.validate();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "rules[0].filters[0].urlRewrite.path.type");
}

#[test]
fn typos_are_refused() {
    let e = serde_yaml_ng::from_str::<Route>(
        "name: a\nnamespace: b\nrules: [{backendRef: [{name: x, port: 1}]}]\n",
    )
    .expect_err("unknown field");
    assert!(e.to_string().contains("backendRef"), "{e}");
}

fn grpc(kind: ValueMatchType, service: Option<&str>, method: Option<&str>) -> GrpcRouteRule {
    GrpcRouteRule {
        matches: vec![GrpcRouteMatch {
            method: Some(GrpcMethodMatch {
                kind,
                service: service.map(Into::into),
                method: method.map(Into::into),
            }),
            headers: vec![],
        }],
        ..Default::default()
    }
}

fn lowered_path(rule: &GrpcRouteRule) -> PathMatch {
    let r = lower(rule).expect("lowers");
    r.matches[0].path.clone().expect("has a path")
}

#[test]
fn grpc_methods_become_paths() {
    use ValueMatchType::*;
    let p = lowered_path(&grpc(Exact, Some("echo.Echo"), Some("Say")));
    assert_eq!(
        (p.kind, p.value.as_str()),
        (PathMatchType::Exact, "/echo.Echo/Say")
    );
    let p = lowered_path(&grpc(Exact, Some("echo.Echo"), None));
    assert_eq!(
        (p.kind, p.value.as_str()),
        (PathMatchType::PathPrefix, "/echo.Echo")
    );
    let p = lowered_path(&grpc(Exact, None, Some("Say")));
    assert_eq!(p.kind, PathMatchType::RegularExpression);
    let re = regex::Regex::new(&format!("^(?:{})$", p.value)).expect("compiles");
    assert!(re.is_match("/echo.Echo/Say"));
    assert!(!re.is_match("/echo.Echo/Sayx"));
    let p = lowered_path(&grpc(RegularExpression, Some("echo\\..*"), None));
    let re = regex::Regex::new(&format!("^(?:{})$", p.value)).expect("compiles");
    assert!(re.is_match("/echo.Echo/Say"));
    assert!(!re.is_match("/other.Echo/Say"));
    assert!(lower(&grpc(Exact, None, None)).is_err());
    assert!(lower(&grpc(Exact, Some("a/b"), None)).is_err());
}
