//! The one translation from Kubernetes objects to the mesh model. Both sources call it, so a
//! label on a namespace means the same whether it was `kubectl apply`-ed to a cluster or
//! written into a manifests directory.
//!
//! What is not part of the mesh is left out quietly (host-network pods, pods without an IP
//! yet, finished pods, headless services, UDP ports); what is wrong is reported as a
//! [`Problem`] naming the object and field. The manifests source refuses a load with any
//! problem; the API source applies the rest and reports the problem (an API server accepts
//! objects one by one, and one bad object must not stop the node).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::objects::{ObjectKey, ObjectSet, Stored, namespace_of};
use super::{
    MODE_AMBIENT, MODE_LABEL, MODE_NONE, NETNS_ANNOTATION, SERVICE_NAME_LABEL, USE_WAYPOINT_LABEL,
    WAYPOINT_NONE,
};
use crate::config::meshfile::{ServiceFile, WorkloadFile};
use crate::model::policy::{Action, AuthorizationPolicy, Rule};
use crate::model::route::{Route, RouteKind, grpc};
use crate::model::traffic::TrafficPolicy;

mod owner;
mod traffic;
use crate::model::{CaptureMode, InboundMode, ServicePort, TunnelProtocol};

/// Something wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Kind namespace/name` and where it came from.
    pub object: String,
    /// The field at fault, in the object's own terms (`spec.ports[0].targetPort`).
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.path, self.message)
    }
}

/// The mesh items built from an [`ObjectSet`], in the compact form the mesh file also uses,
/// each list with the origin of every item so that later validation can name the object.
#[derive(Debug, Default)]
pub struct Translation {
    pub workloads: Vec<WorkloadFile>,
    pub workload_origins: Vec<String>,
    pub services: Vec<ServiceFile>,
    pub service_origins: Vec<String>,
    pub policies: Vec<AuthorizationPolicy>,
    pub policy_origins: Vec<String>,
    pub routes: Vec<Route>,
    pub route_origins: Vec<String>,
    pub traffic_policies: Vec<TrafficPolicy>,
    pub traffic_policy_origins: Vec<String>,
    pub problems: Vec<Problem>,
}

struct Ctx<'a> {
    objects: &'a ObjectSet,
    out: Translation,
}

impl Ctx<'_> {
    fn problem(&mut self, object: String, path: impl Into<String>, message: impl Into<String>) {
        self.out.problems.push(Problem {
            object,
            path: path.into(),
            message: message.into(),
        });
    }

    fn namespace_label(&self, ns: &str, key: &str) -> Option<&str> {
        let n = self.objects.namespaces.get(ns)?;
        n.object
            .metadata
            .labels
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

pub fn translate(objects: &ObjectSet) -> Translation {
    let mut cx = Ctx {
        objects,
        out: Translation::default(),
    };
    let pods = workloads(&mut cx);
    services(&mut cx, &pods);
    policies(&mut cx);
    routes(&mut cx);
    traffic::traffic_policies(&mut cx);
    cx.out
}

fn describe(kind: &str, key: &ObjectKey, origin: &str) -> String {
    format!("{kind} {}/{} ({origin})", key.0, key.1)
}

/// What the service translation needs to know of each pod that became a workload.
struct PodInfo<'a> {
    pod: &'a Pod,
    terminating: bool,
}

fn workloads<'a>(cx: &mut Ctx<'a>) -> HashMap<ObjectKey, PodInfo<'a>> {
    let mut ip_owner: HashMap<IpAddr, ObjectKey> = HashMap::new();
    let mut out = HashMap::new();
    let objects = cx.objects;
    for (
        key,
        Stored {
            object: pod,
            origin,
        },
    ) in &objects.pods
    {
        let who = describe("Pod", key, origin);
        let Some(spec) = &pod.spec else { continue };
        if spec.host_network == Some(true) {
            // It shares the node's address: capturing "it" would capture the node.
            continue;
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            // Finished: its IP is free for the next pod.
            continue;
        }
        let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        let listed: Vec<(String, &str)> = match status.and_then(|s| s.pod_ips.as_ref()) {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
                .collect(),
            _ => status
                .and_then(|s| s.pod_ip.as_deref())
                .map(|ip| vec![("status.podIP".to_string(), ip)])
                .unwrap_or_default(),
        };
        let mut bad = false;
        for (path, text) in listed {
            match text.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => {
                    cx.problem(who.clone(), path, format!("{text:?} is not an IP address"));
                    bad = true;
                }
            }
        }
        if ips.is_empty() || bad {
            // No address yet (still being created): nothing can reach it, nothing to capture.
            continue;
        }
        if let Some((ip, other)) = ips
            .iter()
            .find_map(|ip| ip_owner.get(ip).map(|o| (ip, o.clone())))
        {
            cx.problem(
                who,
                "status.podIPs",
                format!("{ip} is also the address of Pod {}/{}", other.0, other.1),
            );
            continue;
        }
        for ip in &ips {
            ip_owner.insert(*ip, key.clone());
        }
        let meta = &pod.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let ns = key.0.as_str();
        let meshed = cx.namespace_label(ns, MODE_LABEL) == Some(MODE_AMBIENT)
            && labels.get(MODE_LABEL).map(String::as_str) != Some(MODE_NONE);
        let waypoint = labels
            .get(USE_WAYPOINT_LABEL)
            .map(String::as_str)
            .or_else(|| cx.namespace_label(ns, USE_WAYPOINT_LABEL))
            .filter(|w| *w != WAYPOINT_NONE)
            .map(str::to_string);
        let netns = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETNS_ANNOTATION))
            .map(PathBuf::from);
        cx.out.workloads.push(WorkloadFile {
            name: key.1.clone(),
            workload_name: Some(owner::workload_name(pod)),
            namespace: key.0.clone(),
            service_account: spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            uid: Some(
                meta.uid
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", key.0, key.1)),
            ),
            ips,
            node,
            labels,
            mode: if meshed {
                CaptureMode::Ambient
            } else {
                CaptureMode::None
            },
            tunnel: TunnelProtocol::Hbone,
            inbound: InboundMode::Strict,
            waypoint,
            netns,
        });
        cx.out.workload_origins.push(who);
        out.insert(
            key.clone(),
            PodInfo {
                pod,
                // Still running and still enrolled, so its last connections stay in the mesh;
                // no longer a service endpoint.
                terminating: meta.deletion_timestamp.is_some(),
            },
        );
    }
    out
}

fn services(cx: &mut Ctx<'_>, pods: &HashMap<ObjectKey, PodInfo<'_>>) {
    let objects = cx.objects;
    // EndpointSlices by the service they belong to.
    let mut slices: HashMap<ObjectKey, Vec<&Stored<_>>> = HashMap::new();
    for ((ns, _), s) in &objects.endpoint_slices {
        if let Some(svc) = s
            .object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices.entry((ns.clone(), svc.clone())).or_default().push(s);
        }
    }
    for (
        key,
        Stored {
            object: svc,
            origin,
        },
    ) in &objects.services
    {
        let who = describe("Service", key, origin);
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let vips = cluster_ips(cx, &who, svc);
        if vips.is_empty() {
            // Headless: clients reach the pods by their own addresses.
            continue;
        }
        let slices = slices.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let selected: Vec<&ObjectKey> = match &spec.selector {
            Some(sel) if slices.is_empty() && !sel.is_empty() => {
                let mut v: Vec<&ObjectKey> = pods
                    .iter()
                    .filter(|(k, p)| {
                        k.0 == key.0
                            && !p.terminating
                            && sel.iter().all(|(lk, lv)| {
                                p.pod.metadata.labels.as_ref().and_then(|l| l.get(lk)) == Some(lv)
                            })
                    })
                    .map(|(k, _)| k)
                    .collect();
                v.sort();
                v
            }
            _ => Vec::new(),
        };
        let mut endpoints: Vec<String> = Vec::new();
        for s in slices {
            let slice = &s.object;
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            for (i, ep) in slice.endpoints.iter().enumerate() {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                let Some(target) = &ep.target_ref else {
                    continue;
                };
                if target.kind.as_deref().is_some_and(|k| k != "Pod") {
                    continue;
                }
                let ns = target
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace_of(&slice.metadata).to_string());
                let Some(name) = target.name.clone() else {
                    continue;
                };
                if ns != key.0 {
                    let slice_name = slice.metadata.name.clone().unwrap_or_default();
                    cx.problem(
                        format!("EndpointSlice {}/{slice_name} ({})", key.0, s.origin),
                        format!("endpoints[{i}].targetRef"),
                        format!(
                            "names Pod {ns}/{name}: a Service's endpoints are pods of its own namespace"
                        ),
                    );
                    continue;
                }
                // A pod the mesh does not know (no IP yet, finished) is no endpoint.
                if pods.contains_key(&(ns.clone(), name.clone())) {
                    let ep = format!("{ns}/{name}");
                    if !endpoints.contains(&ep) {
                        endpoints.push(ep);
                    }
                }
            }
        }
        endpoints.extend(selected.iter().map(|k| format!("{}/{}", k.0, k.1)));
        let ports = service_ports(cx, &who, svc, slices, &selected, pods);
        if ports.is_empty() {
            continue;
        }
        let labels = svc.metadata.labels.as_ref();
        let waypoint = labels
            .and_then(|l| l.get(USE_WAYPOINT_LABEL))
            .map(String::as_str)
            .or_else(|| cx.namespace_label(&key.0, USE_WAYPOINT_LABEL))
            .filter(|w| *w != WAYPOINT_NONE)
            .map(str::to_string);
        cx.out.services.push(ServiceFile {
            name: key.1.clone(),
            namespace: key.0.clone(),
            hostname: None,
            vips,
            ports,
            selector: None,
            endpoints: Some(endpoints),
            waypoint,
        });
        cx.out.service_origins.push(who);
    }
}

fn cluster_ips(cx: &mut Ctx<'_>, who: &str, svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let listed: Vec<(String, &str)> = match &spec.cluster_ips {
        Some(l) if !l.is_empty() => l
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => spec
            .cluster_ip
            .as_deref()
            .map(|ip| vec![("spec.clusterIP".to_string(), ip)])
            .unwrap_or_default(),
    };
    let mut vips = Vec::new();
    for (path, text) in listed {
        if text.is_empty() || text == "None" {
            continue;
        }
        match text.parse::<IpAddr>() {
            Ok(ip) if !vips.contains(&ip) => vips.push(ip),
            Ok(_) => {}
            Err(_) => cx.problem(
                who.to_string(),
                path,
                format!("{text:?} is not an IP address"),
            ),
        }
    }
    vips
}

/// TCP ports, with named target ports resolved: from the EndpointSlices' ports of the same
/// name (what the EndpointSlice controller computed from the pods), or, for a manifests
/// directory without EndpointSlices, from the selected pods' container ports.
fn service_ports(
    cx: &mut Ctx<'_>,
    who: &str,
    svc: &Service,
    slices: &[&Stored<k8s_openapi::api::discovery::v1::EndpointSlice>],
    selected: &[&ObjectKey],
    pods: &HashMap<ObjectKey, PodInfo<'_>>,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    let Some(ports) = svc.spec.as_ref().and_then(|s| s.ports.as_ref()) else {
        return out;
    };
    for (i, p) in ports.iter().enumerate() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let Some(port) = u16::try_from(p.port).ok().filter(|&n| n != 0) else {
            cx.problem(
                who.to_string(),
                format!("spec.ports[{i}].port"),
                "must be between 1 and 65535",
            );
            continue;
        };
        let target_port = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => match u16::try_from(*n).ok().filter(|&n| n != 0) {
                Some(n) => Some(n),
                None => {
                    cx.problem(
                        who.to_string(),
                        format!("spec.ports[{i}].targetPort"),
                        "must be between 1 and 65535",
                    );
                    continue;
                }
            },
            Some(IntOrString::String(name)) => {
                match resolve_named(name, p.name.as_deref(), slices, selected, pods) {
                    Some(n) => Some(n),
                    None if slices.is_empty() && selected.is_empty() => {
                        // No endpoint yet: the port number is unknown and nothing needs it.
                        None
                    }
                    None => {
                        cx.problem(
                            who.to_string(),
                            format!("spec.ports[{i}].targetPort"),
                            format!("no endpoint has a port named {name:?}"),
                        );
                        continue;
                    }
                }
            }
        };
        out.push(ServicePort {
            port,
            target_port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    out
}

fn resolve_named(
    target: &str,
    service_port_name: Option<&str>,
    slices: &[&Stored<k8s_openapi::api::discovery::v1::EndpointSlice>],
    selected: &[&ObjectKey],
    pods: &HashMap<ObjectKey, PodInfo<'_>>,
) -> Option<u16> {
    // The EndpointSlice controller names slice ports after the service port, not the target.
    let from_slices = slices.iter().find_map(|s| {
        s.object.ports.as_ref()?.iter().find_map(|p| {
            (p.name.as_deref().unwrap_or("") == service_port_name.unwrap_or(""))
                .then_some(p.port)
                .flatten()
        })
    });
    if let Some(n) = from_slices {
        return u16::try_from(n).ok().filter(|&n| n != 0);
    }
    selected.iter().find_map(|k| {
        let spec = pods.get(*k)?.pod.spec.as_ref()?;
        spec.containers.iter().find_map(|c| {
            c.ports.as_ref()?.iter().find_map(|cp| {
                (cp.name.as_deref() == Some(target))
                    .then(|| u16::try_from(cp.container_port).ok())
                    .flatten()
            })
        })
    })
}

fn policies(cx: &mut Ctx<'_>) {
    let objects = cx.objects;
    for (key, Stored { object, origin }) in &objects.policies {
        let who = describe("AuthorizationPolicy", key, origin);
        let mut policy = object.to_model();
        let errors = policy.validate();
        if !errors.is_empty() {
            let stand_in = match policy.action {
                // Nothing in its scope is allowed until it is fixed, as an ALLOW policy that
                // matches nothing...
                Action::Allow => "it allows nothing until it is fixed",
                // ...and everything in its scope is denied, rather than failing open.
                Action::Deny => "it denies everything it selects until it is fixed",
                Action::Audit => "it is not applied",
            };
            for e in errors {
                cx.problem(
                    who.clone(),
                    format!("spec.{}", e.path),
                    format!("{}; {stand_in}", e.message),
                );
            }
            match policy.action {
                Action::Allow => policy.rules = Vec::new(),
                Action::Deny => policy.rules = vec![Rule::default()],
                Action::Audit => continue,
            }
        }
        cx.out.policies.push(policy);
        cx.out.policy_origins.push(who);
    }
}

/// HTTPRoutes and GRPCRoutes (the latter as the HTTP rules they mean). A route with a problem
/// is left out, as Gateway API leaves an unaccepted route unprogrammed: its requests take the
/// service's default backend.
fn routes(cx: &mut Ctx<'_>) {
    let objects = cx.objects;
    let meta = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, kind| Route {
        name: m.name.clone().unwrap_or_default(),
        namespace: namespace_of(m).to_string(),
        kind,
        created: m.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        parent_refs: Vec::new(),
        hostnames: Vec::new(),
        rules: Vec::new(),
    };
    // (object, the route or the (path, message) problems that kept it from being built)
    type Built = (String, Result<Route, Vec<(String, String)>>);
    let mut built: Vec<Built> = Vec::new();
    let unreadable = |u: &(String, String)| vec![u.clone()];
    for (key, Stored { object, origin }) in &objects.http_routes {
        if let Some(u) = &object.spec.unreadable {
            built.push((describe("HTTPRoute", key, origin), Err(unreadable(u))));
            continue;
        }
        let mut r = meta(&object.metadata, RouteKind::Http);
        r.parent_refs = object.spec.parent_refs.clone();
        r.hostnames = object.spec.hostnames.clone();
        r.rules = object.spec.rules.clone();
        built.push((describe("HTTPRoute", key, origin), Ok(r)));
    }
    for (key, Stored { object, origin }) in &objects.grpc_routes {
        if let Some(u) = &object.spec.unreadable {
            built.push((describe("GRPCRoute", key, origin), Err(unreadable(u))));
            continue;
        }
        let mut r = meta(&object.metadata, RouteKind::Grpc);
        r.parent_refs = object.spec.parent_refs.clone();
        r.hostnames = object.spec.hostnames.clone();
        let mut errors = Vec::new();
        for (i, rule) in object.spec.rules.iter().enumerate() {
            match grpc::lower(rule) {
                Ok(l) => r.rules.push(l),
                Err(e) => errors.push((format!("spec.rules[{i}].{}", e.path), e.message)),
            }
        }
        let r = if errors.is_empty() {
            Ok(r)
        } else {
            Err(errors)
        };
        built.push((describe("GRPCRoute", key, origin), r));
    }
    for (who, r) in built {
        let route = match r {
            Ok(route) => route,
            Err(errors) => {
                for (path, message) in errors {
                    cx.problem(
                        who.clone(),
                        path,
                        format!("{message}; the route is not applied"),
                    );
                }
                continue;
            }
        };
        let errors = route.validate();
        if !errors.is_empty() {
            for e in errors {
                let path = match e.path.as_str() {
                    "name" | "namespace" => format!("metadata.{}", e.path),
                    p => format!("spec.{p}"),
                };
                cx.problem(
                    who.clone(),
                    path,
                    format!("{}; the route is not applied", e.message),
                );
            }
            continue;
        }
        cx.out.routes.push(route);
        cx.out.route_origins.push(who);
    }
}
