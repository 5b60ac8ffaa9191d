//! Route status: what the mesh makes of each HTTPRoute and GRPCRoute attached to a Service,
//! written to `status.parents` under weft's controller name, so that `kubectl get httproute
//! -o yaml` tells a route's author whether it is applied and, if not, what to fix. The
//! controller is the one writer (every waypoint would otherwise race to write the same field).
//!
//! Per Service parent:
//! - `Accepted`: False/`UnsupportedValue` with every field at fault when the route does not
//!   translate (the waypoints leave it out and the Service's default backend answers);
//!   False/`NoMatchingParent` when the Service or the named port is not there; False/`Pending`
//!   when no waypoint is bound to the Service (only a waypoint applies routes); else True.
//! - `ResolvedRefs`: False/`InvalidKind`, `RefNotPermitted` or `BackendNotFound` naming every
//!   backend at fault (the waypoint answers a missing backend with 503 `UH`); else True.
//!
//! Validity is the one translation's (`weft_core::discovery::translate`), fed the routes, the
//! Services and the namespaces as the waypoints see them, so status and behaviour cannot
//! disagree. Entries of other controllers (a Gateway parent's) are kept as they are.

use std::collections::{BTreeMap, HashMap};

use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use weft_core::discovery::gateway::{GRPCRoute, HTTPRoute, Listed};
use weft_core::discovery::objects::{Object, ObjectSet};
use weft_core::discovery::translate::translate;

use crate::follow::follow;

/// How weft's entries in `status.parents` are told from other controllers'.
pub const CONTROLLER_NAME: &str = "weft.dev/mesh-controller";
const ORIGIN: &str = "api";

/// A condition as (type, status, reason, message).
type Verdict = (&'static str, bool, &'static str, String);

/// One route, of either kind, as the judgement needs it.
pub struct Seen<'a> {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub spec: &'a Value,
}

/// What the translation and the cluster say, for judging routes.
pub struct View {
    /// `Kind namespace/name` -> "field: message" of each problem.
    problems: HashMap<String, Vec<String>>,
    /// Services that exist: (namespace, name) -> their ports.
    services: HashMap<(String, String), Vec<u16>>,
    /// Services the mesh routes for: (namespace, name) -> the waypoint bound, if any.
    mesh: HashMap<(String, String), Option<String>>,
}

impl View {
    pub fn new(
        namespaces: &[std::sync::Arc<Namespace>],
        services: &[std::sync::Arc<Service>],
        http: &[std::sync::Arc<Listed<HTTPRoute>>],
        grpc: &[std::sync::Arc<Listed<GRPCRoute>>],
    ) -> View {
        let mut set = ObjectSet::default();
        for n in namespaces {
            set.upsert(Object::Namespace(n.as_ref().clone()), ORIGIN.into());
        }
        for s in services {
            set.upsert(Object::Service(Box::new(s.as_ref().clone())), ORIGIN.into());
        }
        for r in http {
            set.upsert(
                Object::HttpRoute(Box::new(r.as_ref().clone().decode())),
                ORIGIN.into(),
            );
        }
        for r in grpc {
            set.upsert(
                Object::GrpcRoute(Box::new(r.as_ref().clone().decode())),
                ORIGIN.into(),
            );
        }
        let t = translate(&set);
        let suffix = format!(" ({ORIGIN})");
        let mut problems: HashMap<String, Vec<String>> = HashMap::new();
        for p in &t.problems {
            let object = p
                .object
                .strip_suffix(&suffix)
                .unwrap_or(&p.object)
                .to_owned();
            problems
                .entry(object)
                .or_default()
                .push(format!("{}: {}", p.path, p.message));
        }
        let services = services
            .iter()
            .map(|s| {
                let ports = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| u16::try_from(p.port).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                ((s.namespace().unwrap_or_default(), s.name_any()), ports)
            })
            .collect();
        let mesh = t
            .services
            .iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s.waypoint.clone()))
            .collect();
        View {
            problems,
            services,
            mesh,
        }
    }

    /// weft's entries for the route's `status.parents`, without transition times: one per
    /// Service parent, in the order of `spec.parentRefs`.
    pub fn judge(&self, route: &Seen<'_>) -> Vec<(Value, Vec<Verdict>)> {
        let refs = backends(route);
        let problems = self.problems.get(&format!(
            "{} {}/{}",
            route.kind, route.namespace, route.name
        ));
        let mut out = Vec::new();
        for parent in route.spec["parentRefs"].as_array().into_iter().flatten() {
            if !is_service(parent, "Gateway") {
                continue;
            }
            let namespace = parent["namespace"]
                .as_str()
                .unwrap_or(&route.namespace)
                .to_owned();
            let name = parent["name"].as_str().unwrap_or_default().to_owned();
            let key = (namespace.clone(), name.clone());
            let service = format!("Service {namespace}/{name}");
            let accepted = if let Some(problems) = problems {
                let message = problems.join("; ");
                ("Accepted", false, "UnsupportedValue", message)
            } else if !self.services.contains_key(&key) {
                let message = format!("{service} does not exist");
                ("Accepted", false, "NoMatchingParent", message)
            } else if let Some(port) = parent["port"].as_u64()
                && !self.services[&key].iter().any(|p| u64::from(*p) == port)
            {
                let message = format!("{service} has no port {port}");
                ("Accepted", false, "NoMatchingParent", message)
            } else {
                match self.mesh.get(&key) {
                    None => (
                        "Accepted",
                        false,
                        "NoMatchingParent",
                        format!(
                            "{service} has no cluster IP or no ports (headless or ExternalName): the mesh has no address to route for"
                        ),
                    ),
                    Some(None) => (
                        "Accepted",
                        false,
                        "Pending",
                        format!(
                            "{service} is not bound to a waypoint, and only a waypoint applies routes: label the Service or its namespace weft.dev/use-waypoint=<waypoint>"
                        ),
                    ),
                    Some(Some(waypoint)) => (
                        "Accepted",
                        true,
                        "Accepted",
                        format!("applied by waypoint {namespace}/{waypoint}"),
                    ),
                }
            };
            out.push((parent.clone(), vec![accepted, self.resolved(route, &refs)]));
        }
        out
    }

    fn resolved(&self, route: &Seen<'_>, refs: &[(String, &Value)]) -> Verdict {
        // The worst reason names the condition; the message names every backend at fault.
        let mut worst: Option<(u8, &'static str)> = None;
        let mut faults = Vec::new();
        let mut fault = |rank: u8, reason: &'static str, message: String| {
            if worst.is_none_or(|(r, _)| rank > r) {
                worst = Some((rank, reason));
            }
            faults.push(message);
        };
        for (at, r) in refs {
            let name = r["name"].as_str().unwrap_or_default();
            let namespace = r["namespace"].as_str().unwrap_or(&route.namespace);
            if !is_service(r, "Service") {
                let kind = r["kind"].as_str().unwrap_or("Service");
                fault(
                    3,
                    "InvalidKind",
                    format!(
                        "{at}: kind {kind:?} is not a backend weft can route to (Services only)"
                    ),
                );
            } else if namespace != route.namespace {
                fault(
                    2,
                    "RefNotPermitted",
                    format!(
                        "{at}: Service {namespace}/{name} is in another namespace; that needs a ReferenceGrant, which weft does not read yet"
                    ),
                );
            } else {
                let key = (namespace.to_owned(), name.to_owned());
                match (self.services.get(&key), r["port"].as_u64()) {
                    (None, _) => fault(
                        1,
                        "BackendNotFound",
                        format!(
                            "{at}: Service {namespace}/{name} does not exist; requests for it are answered 503"
                        ),
                    ),
                    (Some(ports), Some(port)) if !ports.iter().any(|p| u64::from(*p) == port) => {
                        fault(
                            1,
                            "BackendNotFound",
                            format!(
                                "{at}: Service {namespace}/{name} has no port {port}; requests for it are answered 503"
                            ),
                        )
                    }
                    _ => {}
                }
            }
        }
        match worst {
            None => (
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every backend was found".to_owned(),
            ),
            Some((_, reason)) => ("ResolvedRefs", false, reason, faults.join("; ")),
        }
    }
}

/// Whether a parent or backend reference names a core Service. `default_kind` is the
/// reference's default (Gateway API defaults a backend to a Service, a parent to a Gateway).
fn is_service(reference: &Value, default_kind: &str) -> bool {
    reference["kind"].as_str().unwrap_or(default_kind) == "Service"
        && matches!(reference["group"].as_str(), None | Some("") | Some("core"))
}

/// Every backend reference in the route (rules, backend filters, mirrors), with its path.
fn backends<'a>(route: &Seen<'a>) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    let mirrors = |at: &str, filters: &'a Value, out: &mut Vec<(String, &'a Value)>| {
        for (k, f) in filters.as_array().into_iter().flatten().enumerate() {
            let b = &f["requestMirror"]["backendRef"];
            if b.is_object() {
                out.push((format!("{at}.filters[{k}].requestMirror.backendRef"), b));
            }
        }
    };
    for (i, rule) in route.spec["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.rules[{i}]");
        mirrors(&at, &rule["filters"], &mut out);
        for (j, b) in rule["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{at}.backendRefs[{j}]");
            out.push((at.clone(), b));
            mirrors(&at, &b["filters"], &mut out);
        }
    }
    out
}

/// The conditions as the API wants them: transition times kept while the status holds.
fn conditions(
    verdicts: &[Verdict],
    previous: Option<&Value>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Value> {
    verdicts
        .iter()
        .map(|(type_, ok, reason, message)| {
            let status = if *ok { "True" } else { "False" };
            let before = previous
                .and_then(|p| p["conditions"].as_array())
                .and_then(|cs| cs.iter().find(|c| c["type"] == *type_));
            let since = before
                .filter(|c| c["status"] == status)
                .map(|c| c["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(now));
            let mut c = json!({"type": type_, "status": status, "reason": reason,
                               "message": message, "lastTransitionTime": since});
            if let Some(g) = generation {
                c["observedGeneration"] = json!(g);
            }
            c
        })
        .collect()
}

/// Whether weft's entries there already say what `wanted` says (transition times aside).
fn same(have: &[&Value], wanted: &[(Value, Vec<Verdict>)], generation: Option<i64>) -> bool {
    have.len() == wanted.len()
        && have.iter().zip(wanted).all(|(h, (parent, verdicts))| {
            let cs = h["conditions"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            h["parentRef"] == *parent
                && cs.len() == verdicts.len()
                && cs
                    .iter()
                    .zip(verdicts)
                    .all(|(c, (t, ok, reason, message))| {
                        c["type"] == *t
                            && c["status"] == if *ok { "True" } else { "False" }
                            && c["reason"] == *reason
                            && c["message"] == message.as_str()
                            && c["observedGeneration"].as_i64() == generation
                    })
        })
}

/// Patches the route's weft entries when they differ; returns whether it wrote.
async fn write<K>(
    api: &Api<Listed<K>>,
    route: &Listed<K>,
    view: &View,
    kind: &'static str,
) -> Result<bool, String>
where
    Listed<K>: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let seen = Seen {
        kind,
        namespace: route.namespace().unwrap_or_default(),
        name: route.name_any(),
        spec: &route.spec,
    };
    let wanted = view.judge(&seen);
    let parents = route
        .status
        .as_ref()
        .map(|s| s.parents.as_slice())
        .unwrap_or(&[]);
    let (ours, others): (Vec<&Value>, Vec<&Value>) = parents
        .iter()
        .partition(|p| p["controllerName"] == CONTROLLER_NAME);
    let generation = route.metadata.generation;
    if same(&ours, &wanted, generation) {
        return Ok(false);
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut parents: Vec<Value> = others.into_iter().cloned().collect();
    for (parent, verdicts) in &wanted {
        let previous = ours.iter().find(|p| p["parentRef"] == *parent).copied();
        parents.push(json!({
            "parentRef": parent,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions(verdicts, previous, generation, &now),
        }));
    }
    // The resourceVersion makes the patch conditional: a controller writing its own entry
    // meanwhile makes it fail (409), and the retry reads theirs.
    let patch = json!({
        "metadata": {"resourceVersion": route.resource_version()},
        "status": {"parents": parents},
    });
    let who = format!("{kind} {}/{}", seen.namespace, seen.name);
    api.patch_status(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("writing the status of {who}: {e}"))?;
    debug!(route = %who, "route status written");
    Ok(true)
}

fn watch<K>(
    client: &Client,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<(), String>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let kind = K::kind(&()).into_owned();
    let events = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(move |e| e.map(|_| ()).map_err(|e| format!("watching {kind}s: {e}")));
    (store, events)
}

/// Keeps every route's status current until `stop`.
pub async fn run(client: Client, errors: Counter, stop: CancellationToken) {
    let (http, http_events) = watch::<Listed<HTTPRoute>>(&client);
    let (grpc, grpc_events) = watch::<Listed<GRPCRoute>>(&client);
    let (services, service_events) = watch::<Service>(&client);
    let (namespaces, namespace_events) = watch::<Namespace>(&client);
    let events = stream::select_all([
        http_events.boxed(),
        grpc_events.boxed(),
        service_events.boxed(),
        namespace_events.boxed(),
    ])
    .boxed();
    let ready = {
        let (h, g, s, n) = (
            http.clone(),
            grpc.clone(),
            services.clone(),
            namespaces.clone(),
        );
        async move {
            let _ = tokio::join!(
                h.wait_until_ready(),
                g.wait_until_ready(),
                s.wait_until_ready(),
                n.wait_until_ready()
            );
        }
    };
    follow(
        events,
        ready.boxed(),
        stop,
        errors,
        "writing route status",
        || {
            let (http_routes, grpc_routes) = (http.state(), grpc.state());
            let view = View::new(
                &namespaces.state(),
                &services.state(),
                &http_routes,
                &grpc_routes,
            );
            let client = client.clone();
            async move {
                let mut failed = BTreeMap::new();
                for r in http_routes
                    .iter()
                    .filter(|r| r.metadata.deletion_timestamp.is_none())
                {
                    let api = Api::namespaced(client.clone(), &r.namespace().unwrap_or_default());
                    if let Err(e) = write(&api, r, &view, "HTTPRoute").await {
                        failed.insert(
                            format!(
                                "HTTPRoute {}/{}",
                                r.namespace().unwrap_or_default(),
                                r.name_any()
                            ),
                            e,
                        );
                    }
                }
                for r in grpc_routes
                    .iter()
                    .filter(|r| r.metadata.deletion_timestamp.is_none())
                {
                    let api = Api::namespaced(client.clone(), &r.namespace().unwrap_or_default());
                    if let Err(e) = write(&api, r, &view, "GRPCRoute").await {
                        failed.insert(
                            format!(
                                "GRPCRoute {}/{}",
                                r.namespace().unwrap_or_default(),
                                r.name_any()
                            ),
                            e,
                        );
                    }
                }
                if failed.is_empty() {
                    Ok(())
                } else {
                    Err(failed.into_values().collect::<Vec<_>>().join("; "))
                }
            }
        },
    )
    .await;
}
