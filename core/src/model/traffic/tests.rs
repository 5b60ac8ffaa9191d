use super::*;

fn policy(spec: &str) -> Result<TrafficPolicy, serde_yaml_ng::Error> {
    serde_yaml_ng::from_str(&format!(
        "name: web\nnamespace: default\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: web}}]\n{spec}"
    ))
}

fn errors(spec: &str) -> Vec<(String, String)> {
    policy(spec)
        .unwrap()
        .validate()
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

#[test]
fn a_full_policy_reads_and_validates() {
    let p = policy(
        "  loadBalancer: {type: ConsistentHash, consistentHash: {httpHeaderName: x-user}}
  connectionPool: {maxConnections: 10, maxPendingRequests: 5, maxRequests: 20, maxRequestsPerConnection: 100, idleTimeout: 30s}
  outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 50}
  faults:
  - match: {headers: [{name: x-fault, value: yes}]}
    delay: {fixedDelay: 100ms, percentage: 10}
    abort: {grpcStatus: UNAVAILABLE, percentage: 5}
  rateLimits:
  - {maxTokens: 10, fillInterval: 1s, perSource: true, routes: [web]}
",
    )
    .unwrap();
    assert_eq!(p.validate(), vec![]);
    assert_eq!(p.services().collect::<Vec<_>>(), vec![("default", "web")]);
    let o = p.spec.outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx_errors, Some(3));
    assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
}

#[test]
fn unknown_fields_are_refused() {
    let e = policy("  circuitBreaker: {}\n").unwrap_err().to_string();
    assert!(e.contains("circuitBreaker"), "{e}");
}

#[test]
fn each_mistake_is_named_by_its_field() {
    let got = errors(
        "  loadBalancer: {type: ConsistentHash}
  connectionPool: {maxRequests: 0, idleTimeout: soon}
  outlierDetection: {interval: 0s, maxEjectionPercent: 120}
  faults:
  - {}
  - abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}
  - abort: {httpStatus: 42, percentage: 101}
  - delay: {fixedDelay: 1x}
    match: {headers: [{name: \"bad header\", value: x}, {type: RegularExpression, name: x, value: \"(\"}]}
  rateLimits:
  - {maxTokens: 0, fillInterval: 0s, routes: [other/web]}
",
    );
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "spec.loadBalancer.consistentHash",
            "spec.connectionPool.maxRequests",
            "spec.connectionPool.idleTimeout",
            "spec.outlierDetection.interval",
            "spec.outlierDetection.maxEjectionPercent",
            "spec.faults[0]",
            "spec.faults[1].abort",
            "spec.faults[2].abort.httpStatus",
            "spec.faults[2].abort.percentage",
            "spec.faults[3].match.headers[0].name",
            "spec.faults[3].match.headers[1].value",
            "spec.faults[3].delay.fixedDelay",
            "spec.rateLimits[0].maxTokens",
            "spec.rateLimits[0].fillInterval",
            "spec.rateLimits[0].routes[0]",
        ],
        "{got:#?}"
    );
}

#[test]
fn a_policy_attaches_only_to_services_of_its_namespace() {
    let p: TrafficPolicy = serde_yaml_ng::from_str(
        "name: p\nnamespace: default\nspec:\n  targetRefs:\n  - {group: gateway.networking.k8s.io, kind: Gateway, name: wp}\n  - {kind: Service, name: web, namespace: other}\n",
    )
    .unwrap();
    let paths: Vec<String> = p.validate().into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        vec!["spec.targetRefs[0].kind", "spec.targetRefs[1].namespace"]
    );
}
