//! Mesh-file validation: every refusal names the field at fault.

use std::path::Path;

use super::load::{ConfigError, load_str};

const BASE: &str = r#"
workloads:
  - {name: sleep, serviceAccount: sleep, ips: [127.0.1.1], node: node1, labels: {app: sleep}}
  - {name: echo, serviceAccount: echo, ips: [127.0.2.1], node: node2, labels: {app: echo}}
services:
  - name: echo
    vips: [127.0.0.100]
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: echo}
"#;

fn errors(text: &str) -> Vec<String> {
    match load_str(text, "mesh.yaml", Path::new(".")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
        Err(ConfigError::Syntax { path, message, .. }) => vec![format!("{path}: {message}")],
        Err(e) => vec![e.to_string()],
    }
}

fn assert_refused(text: &str, path: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.starts_with(&format!("{path}: "))),
        "expected an error at {path}, got {errs:?}"
    );
}

#[test]
fn base_is_valid_and_indexed() {
    let m = load_str(BASE, "mesh.yaml", Path::new(".")).unwrap();
    assert_eq!(m.state.workloads.len(), 2);
    let s = &m.state.services[0];
    assert_eq!(s.endpoint_names, vec!["default/echo".to_string()]);
    assert_eq!(s.hostname, "echo.default.svc.cluster.local");
    assert_eq!(
        m.state.workloads[0].identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
}

#[test]
fn example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh.yaml");
    let m = super::load_file(&path).unwrap();
    assert!(m.state.workloads.len() >= 3);
    assert!(m.ca.unwrap().cert_file.is_absolute());
}

#[test]
fn target_port_zero_names_its_path() {
    assert_refused(
        &BASE.replace("targetPort: 8080", "targetPort: 0"),
        "services[0].ports[0].targetPort",
    );
}

#[test]
fn type_errors_name_their_path() {
    assert_refused(
        &BASE.replace("targetPort: 8080", "targetPort: 70000"),
        "services[0].ports[0].targetPort",
    );
    assert_refused(
        &BASE.replace("ips: [127.0.2.1]", "ips: [not-an-ip]"),
        "workloads[1].ips[0]",
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert_refused(
        &BASE.replace("selector: {app: echo}", "selectr: {app: echo}"),
        "services[0].selectr",
    );
    let errs = errors(&BASE.replace("selector: {app: echo}", "selectr: {app: echo}"));
    assert!(
        errs[0].starts_with("services[0].selectr: unknown field `selectr`"),
        "{errs:?}"
    );
    assert_refused(&format!("trustDomian: x\n{BASE}"), "trustDomian");
}

#[test]
fn duplicate_ips_and_names_are_refused() {
    assert_refused(
        &BASE.replace("127.0.2.1", "127.0.1.1"),
        "workloads[1].ips[0]",
    );
    assert_refused(
        &BASE.replace("name: echo,", "name: sleep,"),
        "workloads[1].name",
    );
}

#[test]
fn bad_identity_parts_name_the_field() {
    assert_refused(
        &BASE.replace("serviceAccount: echo", "serviceAccount: Echo_"),
        "workloads[1].serviceAccount",
    );
    assert_refused(
        &BASE.replace(
            "{name: echo, serviceAccount",
            "{name: echo, namespace: Bad_NS, serviceAccount",
        ),
        "workloads[1].namespace",
    );
    assert_refused(
        &format!("trustDomain: \"Not Valid\"\n{BASE}"),
        "trustDomain",
    );
}

#[test]
fn service_problems_name_the_field() {
    assert_refused(
        &BASE.replace("vips: [127.0.0.100]", "vips: [127.0.2.1]"),
        "services[0].vips[0]",
    );
    assert_refused(
        &BASE.replace("vips: [127.0.0.100]", "vips: []"),
        "services[0].vips",
    );
    assert_refused(
        &BASE.replace("selector: {app: echo}", "endpoints: [echo, nope]"),
        "services[0].endpoints[1]",
    );
    assert_refused(
        &BASE.replace(
            "selector: {app: echo}",
            "selector: {app: echo}\n    endpoints: [echo]",
        ),
        "services[0].endpoints",
    );
    let twice = format!("{BASE}  - {{name: echo2, vips: [127.0.0.100], ports: [{{port: 80}}]}}\n");
    assert_refused(&twice, "services[1].ports[0].port");
}

#[test]
fn policy_errors_are_prefixed_with_their_index() {
    let text = format!(
        "{BASE}policies:\n  - name: p\n    namespace: default\n    rules: [{{from: [{{source: {{ipBlocks: [\"10.0.0.0/33\"]}}}}]}}]\n"
    );
    assert_refused(&text, "policies[0].rules[0].from[0].source.ipBlocks[0]");
}

#[test]
fn every_error_is_reported_at_once() {
    let text = BASE
        .replace("targetPort: 8080", "targetPort: 0")
        .replace("127.0.2.1", "127.0.1.1");
    assert_eq!(errors(&text).len(), 2, "{:?}", errors(&text));
}

#[test]
fn node_settings_default_and_parse() {
    let text = format!(
        "nodes:\n  - {{name: node1, drainPeriod: 3s, listen: {{outbound: \"127.0.0.1:9001\"}}}}\n{BASE}"
    );
    let m = load_str(&text, "mesh.yaml", Path::new(".")).unwrap();
    let n = m.node("node1");
    assert_eq!(n.drain_period, std::time::Duration::from_secs(3));
    assert_eq!(n.listen.outbound.port(), 9001);
    assert_eq!(n.listen.admin.port(), 15000);
    assert_eq!(m.node("other").listen.outbound.port(), 15001);
}

#[test]
fn admin_must_stay_on_loopback() {
    let text = format!("nodes:\n  - {{name: node1, listen: {{admin: \"0.0.0.0:15000\"}}}}\n{BASE}");
    assert_refused(&text, "nodes[0].listen.admin");
    let text = format!("nodes:\n  - {{name: node1, hbone: {{keepaliveTimeout: 0s}}}}\n{BASE}");
    assert_refused(&text, "nodes[0].hbone.keepaliveTimeout");
}

#[test]
fn node_defaults_apply_to_every_node_not_listed() {
    let text = r#"
nodes:
  - {name: node1, listen: {outbound: "127.0.0.1:16001"}}
nodeDefaults:
  listen: {outbound: "0.0.0.0:15001"}
  capture: ebpf
  ebpf: {}
  drainPeriod: 30s
"#;
    let m = load_str(text, "mesh.yaml", Path::new(".")).unwrap();
    let listed = m.node("node1");
    assert_eq!(listed.listen.outbound.to_string(), "127.0.0.1:16001");
    assert_eq!(listed.capture, super::CaptureKind::None);
    let other = m.node("ip-10-0-3-7.ec2.internal");
    assert_eq!(other.name, "ip-10-0-3-7.ec2.internal");
    assert_eq!(other.listen.outbound.to_string(), "0.0.0.0:15001");
    assert_eq!(other.capture, super::CaptureKind::Ebpf);
    assert_eq!(other.drain_period, std::time::Duration::from_secs(30));
    // No redirect address: the node's own IP, filled in by weftd (--node-ip).
    assert!(other.ebpf.unwrap().redirect_address.is_unspecified());

    assert_refused("nodeDefaults: {name: node9}\n", "nodeDefaults.name");
    assert_refused("nodeDefaults: {capture: ebpf}\n", "nodeDefaults.ebpf");
    assert_refused(
        "nodeDefaults: {listen: {admin: \"0.0.0.0:15000\"}}\n",
        "nodeDefaults.listen.admin",
    );
    assert_refused("nodes: [{listen: {}}]\n", "nodes[0].name");
}

#[test]
fn traffic_policies_attach_to_services_and_mistakes_name_their_field() {
    let good = format!(
        "{BASE}trafficPolicies:\n  - name: echo\n    namespace: default\n    spec:\n      targetRefs: [{{kind: Service, name: echo}}]\n      connectionPool: {{maxRequests: 3}}\n"
    );
    let m = load_str(&good, "mesh.yaml", Path::new(".")).unwrap();
    let attached: Vec<&str> = m
        .state
        .traffic_for("default", "echo")
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(attached, vec!["echo"]);
    assert_eq!(m.state.traffic_for("default", "sleep").count(), 0);
    assert_refused(
        &good.replace("maxRequests: 3", "maxRequests: 0"),
        "trafficPolicies[0].spec.connectionPool.maxRequests",
    );
    assert_refused(
        &good.replace("maxRequests: 3", "maxRequest: 3"),
        "trafficPolicies[0].spec.connectionPool.maxRequest",
    );
}
