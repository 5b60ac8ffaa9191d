//! Waypoint Gateways. A namespace asks for its L7 proxy with Gateway API's own object (a
//! `Gateway` of class `weft-waypoint`), so the YAML is the one other GAMMA meshes take; the
//! controller turns it into what weftd looks for: a Service named after the Gateway (weftd
//! finds a waypoint as the Service of that name in the namespace) in front of pods that run
//! as a ServiceAccount of that name (the identity weftd expects from the waypoint).
//!
//! - Everything is owned by the Gateway (controller owner reference): deleting the Gateway
//!   lets the garbage collector remove the rest, and this module never deletes.
//! - What is there is compared with what we want as "contained in", not "equal": the API
//!   server adds defaults (image pull policy, termination paths), and an equality check would
//!   patch on every resync. A difference is fixed with a merge patch of the fields we set.
//! - An object of the same name that the Gateway does not control is left alone and the
//!   Gateway says so (`Programmed=False`): taking over a user's Deployment would be worse. A
//!   pre-existing ServiceAccount is used as it is: it is an identity, and an owner reference
//!   would let the garbage collector delete it with the Gateway.
//! - An invalid Gateway leaves its existing objects as they are, so a typo in an annotation
//!   does not take down the L7 path of a namespace; its status says what to fix.
//! - The mesh settings (trust domain, HBONE port, root namespace) come from the install's
//!   `weft-mesh` ConfigMap, the one weftd reads. A pod cannot mount a ConfigMap of another
//!   namespace, so the file rides in a pod template annotation that a downward API volume
//!   projects to `/etc/weft/mesh.yaml`; a change of the settings rolls the waypoints.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub mod access;
mod objects;
pub use objects::{deployment, service, service_account};

/// The class a waypoint Gateway names; Gateways of other classes are someone else's.
pub const CLASS: &str = "weft-waypoint";
/// On the Gateway: how many waypoint pods to run (1 without it).
pub const REPLICAS_ANNOTATION: &str = "weft.dev/replicas";
/// The waypoint's data-plane threads (its `--workers`); Istio runs its proxies with 2 too.
pub const WORKERS_ANNOTATION: &str = "weft.dev/workers";
const DEFAULT_WORKERS: u16 = 2;

/// How many waypoint pods, and how many data-plane threads each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub replicas: i32,
    pub workers: u16,
}
/// On the pod template: the mesh file, projected to `/etc/weft/mesh.yaml`.
pub const MESH_ANNOTATION: &str = "weft.dev/mesh";
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
const NAME_LABEL: &str = "app.kubernetes.io/name";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const APP: &str = "weft-waypoint";
const MANAGER: &str = "weft-controller";
/// The ConfigMap (in the controller's namespace) and key the chart puts the mesh file in.
const MESH_CONFIGMAP: &str = "weft-mesh";
const MESH_KEY: &str = "mesh.yaml";
const HBONE_PORT: i32 = 15008;
const STATUS_PORT: i32 = 15021;
/// The ServiceAccount has no watch: a resync puts it back if it was deleted.
const RESYNC: Duration = Duration::from_secs(300);

/// Gateway API `Gateway`, as much of it as a waypoint reads. Its CRD is Gateway API's.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    schema = "disabled",
    status = "GatewayStatus"
)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
}

/// What decides whether weft can honour a listener. `allowedRoutes`, which the CRD defaults,
/// is not read: a waypoint's routes attach to Services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub port: i64,
    pub protocol: String,
    pub hostname: Option<String>,
    pub tls: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayStatus {
    pub conditions: Vec<Condition>,
    pub addresses: Vec<GatewayStatusAddress>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayStatusAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

/// What every waypoint pod is given to reach this controller and get its identity.
#[derive(Debug, Clone)]
pub struct Waypoints {
    pub image: String,
    /// Used when the `weft-mesh` ConfigMap is missing.
    pub trust_domain: String,
    /// The certificate service, as pods reach it (`https://weft-controller.weft.svc:15012`).
    pub ca_address: String,
    /// Where the root ConfigMap and `weft-mesh` live.
    pub controller_namespace: String,
    /// The SPIFFE id the controller proves.
    pub controller_identity: String,
    /// The audience of the projected token the pods authenticate with.
    pub audience: String,
    pub cert_lifetime: Duration,
    /// Request spans, when the controller is told where to send them.
    pub tracing: Option<Tracing>,
}

/// Where every waypoint exports its request spans, and how many it samples: one setting for
/// the mesh (the controller's `--waypoint-otlp-endpoint`), as Istio's mesh-wide tracing
/// provider is, because the collector is the cluster's, not a namespace's.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// OTLP/gRPC, `http://collector.observability:4317`.
    pub otlp_endpoint: String,
    /// Of requests that start a trace, the percentage sampled.
    pub sampling: f64,
}

/// What failed, on which object (`Deployment shop/waypoint`), and why.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {source}")]
pub struct Error {
    action: &'static str,
    object: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn failed<E: std::error::Error + Send + Sync + 'static>(
    action: &'static str,
    object: &str,
) -> impl FnOnce(E) -> Error {
    let object = object.to_owned();
    move |e| Error {
        action,
        object,
        source: Box::new(e),
    }
}

/// A condition as (status, reason, message).
type Verdict = (bool, &'static str, String);

/// The replicas and workers to run, or why weft cannot honour the Gateway (every field at
/// fault).
pub fn judge(gateway: &Gateway) -> Result<Sizing, String> {
    let mut problems = Vec::new();
    let replicas = match gateway.annotations().get(REPLICAS_ANNOTATION) {
        None => 1,
        Some(v) => v.trim().parse::<i32>().ok().filter(|n| *n >= 0).unwrap_or_else(|| {
            problems.push(format!(
                "metadata.annotations[{REPLICAS_ANNOTATION}]: {v:?} is not a number of replicas (0 or more)"
            ));
            0
        }),
    };
    let workers = match gateway.annotations().get(WORKERS_ANNOTATION) {
        None => DEFAULT_WORKERS,
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .unwrap_or_else(|| {
                problems.push(format!(
                    "metadata.annotations[{WORKERS_ANNOTATION}]: {v:?} is not a number of threads from 1 to 64"
                ));
                DEFAULT_WORKERS
            }),
    };
    match gateway.spec.listeners.as_slice() {
        [] => {}
        [l] if l.name == "mesh"
            && l.port == i64::from(HBONE_PORT)
            && l.protocol == "HBONE"
            && l.hostname.is_none()
            && l.tls.is_none() => {}
        listeners => {
            let given: Vec<String> = listeners
                .iter()
                .map(|l| format!("{} {}/{}", l.name, l.port, l.protocol))
                .collect();
            problems.push(format!(
                "spec.listeners: a weft waypoint listens for HBONE on port {HBONE_PORT} only; give no listeners or exactly one {{name: mesh, port: {HBONE_PORT}, protocol: HBONE}} without hostname or tls, not [{}]",
                given.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(Sizing { replicas, workers })
    } else {
        Err(problems.join("; "))
    }
}

/// Whether every field of `want` is in `have` with the same value: lists item by item (same
/// length), maps key by key; what the API server added is not a difference.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        (h, w) => h == w,
    }
}

/// Whether `object` is controlled by the Gateway `name` (whatever its uid: a Gateway
/// recreated under the same name takes its objects back).
fn controlled_by(object: &impl Resource, name: &str) -> bool {
    object.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "Gateway"
            && o.api_version.starts_with("gateway.networking.k8s.io/")
            && o.name == name
    })
}

enum Found<K> {
    Ours(K),
    /// Exists and belongs to someone else: left alone.
    Foreign,
}

/// Creates `want`, or merge-patches it in when what is there lacks something of it.
async fn ensure<K>(api: &Api<K>, want: &K, gateway: &str) -> Result<Found<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = want.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&());
    let object = format!(
        "{kind} {}/{name}",
        want.meta().namespace.as_deref().unwrap_or("")
    );
    let encoded = |o: &K| serde_json::to_value(o).map_err(failed("encoding", &object));
    let Some(have) = api
        .get_opt(&name)
        .await
        .map_err(failed("reading", &object))?
    else {
        let made = api
            .create(&PostParams::default(), want)
            .await
            .map_err(failed("creating", &object))?;
        debug!(%object, "created");
        return Ok(Found::Ours(made));
    };
    if !controlled_by(&have, gateway) {
        return Ok(Found::Foreign);
    }
    let wanted = encoded(want)?;
    if contains(&encoded(&have)?, &wanted) {
        return Ok(Found::Ours(have));
    }
    let patched = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&wanted))
        .await
        .map_err(failed("patching", &object))?;
    debug!(%object, "patched to what the Gateway asks for");
    Ok(Found::Ours(patched))
}

struct Context {
    client: Client,
    waypoints: Waypoints,
    errors: Counter,
    /// Gateway (namespace/name) -> reconciles failed in a row, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The install's mesh file; the trust domain alone when the install has none.
    async fn mesh_file(&self) -> Result<String, Error> {
        let namespace = &self.waypoints.controller_namespace;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let map = api.get_opt(MESH_CONFIGMAP).await.map_err(failed(
            "reading",
            &format!("ConfigMap {namespace}/{MESH_CONFIGMAP}"),
        ))?;
        if let Some(file) = map
            .and_then(|m| m.data)
            .and_then(|d| d.get(MESH_KEY).cloned())
        {
            return Ok(file);
        }
        debug!("no ConfigMap {namespace}/{MESH_CONFIGMAP}: waypoints get the trust domain only");
        // A JSON string is a YAML string: the trust domain needs no escaping rules of its own.
        Ok(format!(
            "trustDomain: {}\n",
            json!(self.waypoints.trust_domain)
        ))
    }
}

/// Keeps every waypoint Gateway's objects and status current until `stop`.
pub async fn run(client: Client, waypoints: Waypoints, errors: Counter, stop: CancellationToken) {
    let owned = watcher::Config::default()
        .labels(&format!("{NAME_LABEL}={APP},{MANAGED_BY_LABEL}={MANAGER}"));
    let context = Arc::new(Context {
        client: client.clone(),
        waypoints,
        errors,
        failures: Mutex::default(),
    });
    Controller::new(Api::<Gateway>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client), owned)
        // Our own writes come back as events; let a burst of them end in one reconcile.
        .with_config(controller::Config::default().debounce(Duration::from_millis(300)))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, retry, context)
        .for_each(|result| {
            match result {
                Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::QueueError(e)) => warn!(
                    "watching Gateways and their Deployments and Services (are Gateway API's CRDs installed?): {e}"
                ),
                Err(e) => debug!("waypoint reconciler: {e}"),
            }
            std::future::ready(())
        })
        .await;
}

fn gateway_key(gateway: &Gateway) -> String {
    format!(
        "{}/{}",
        gateway.namespace().unwrap_or_default(),
        gateway.name_any()
    )
}

/// Logged and counted; tried again later, sooner for a first failure.
fn retry(gateway: Arc<Gateway>, error: &Error, context: Arc<Context>) -> Action {
    let key = gateway_key(&gateway);
    let failed = {
        let mut failures = context.failures();
        let n = failures.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_secs(1 << failed.saturating_sub(1).min(8)).min(RESYNC);
    context.errors.inc();
    warn!(gateway = %key, retry_in = ?delay, "reconciling the waypoint: {error}");
    Action::requeue(delay)
}

async fn reconcile(gateway: Arc<Gateway>, context: Arc<Context>) -> Result<Action, Error> {
    let key = gateway_key(&gateway);
    // Without a uid (never from a real API server) there is nothing to own objects with.
    let (Some(namespace), Some(mut owner)) =
        (gateway.namespace(), gateway.controller_owner_ref(&()))
    else {
        return Ok(Action::await_change());
    };
    // The garbage collector's foreground deletion then waits for the waypoint's objects.
    owner.block_owner_deletion = Some(true);
    if gateway.spec.gateway_class_name != CLASS || gateway.meta().deletion_timestamp.is_some() {
        context.failures().remove(&key);
        return Ok(Action::await_change());
    }
    let client = &context.client;
    let (accepted, (programmed, address)) = match judge(&gateway) {
        Err(message) => (
            (false, "InvalidParameters", message),
            (
                (
                    false,
                    "Invalid",
                    "the Gateway is not accepted; its waypoint, if any, is left as it was"
                        .to_owned(),
                ),
                None,
            ),
        ),
        Ok(sizing) => (
            (true, "Accepted", "run by weft-controller".to_owned()),
            keep(&context, &gateway, &namespace, &owner, sizing).await?,
        ),
    };
    write_status(client, &gateway, accepted, programmed, address).await?;
    context.failures().remove(&key);
    Ok(Action::requeue(RESYNC))
}

/// Makes the waypoint's objects what the Gateway asks for; says whether it is programmed,
/// and its address.
async fn keep(
    context: &Context,
    gateway: &Gateway,
    namespace: &str,
    owner: &OwnerReference,
    sizing: Sizing,
) -> Result<(Verdict, Option<String>), Error> {
    let replicas = sizing.replicas;
    let name = gateway.name_any();
    let client = &context.client;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = ensure(&accounts, &service_account(&name, namespace, owner), &name).await?;
    let mesh = context.mesh_file().await?;
    let want = deployment(&name, namespace, owner, sizing, &context.waypoints, &mesh);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = ensure(&deployments, &want, &name).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = ensure(&services, &service(&name, namespace, owner), &name).await?;
    let foreign = |kind: &str| {
        let message = format!(
            "{kind} {namespace}/{name} exists and is not controlled by this Gateway; weft leaves it alone: rename the Gateway or remove the {kind}"
        );
        Ok(((false, "Invalid", message), None))
    };
    let (deployment, service) = match (deployment, service) {
        (Found::Foreign, _) => return foreign("Deployment"),
        (_, Found::Foreign) => return foreign("Service"),
        (Found::Ours(d), Found::Ours(s)) => (d, s),
    };
    let available = deployment
        .status
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let mut programmed = if available > 0 {
        let message = format!("{available} of {replicas} waypoint replicas available");
        (true, "Programmed", message)
    } else {
        let message = format!("waiting for an available replica of Deployment {namespace}/{name}");
        (false, "Pending", message)
    };
    if let Found::Foreign = account {
        programmed.2.push_str(&format!(
            "; ServiceAccount {namespace}/{name} existed before this Gateway and is not given the waypoint's read access to the mesh (ClusterRole {role}): bind it to that role yourself, or delete it and let the Gateway make its own",
            role = access::BINDING
        ));
    }
    let address = service
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None");
    Ok((programmed, address))
}

fn condition(gateway: &Gateway, type_: &str, (ok, reason, message): Verdict) -> Condition {
    let status = if ok { "True" } else { "False" };
    let previous = gateway
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    // The transition time moves only when the status does.
    let since = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: gateway.metadata.generation,
        last_transition_time: since,
    }
}

/// Patches the status subresource when it differs; our own patch comes back as an event and
/// then finds nothing to change.
async fn write_status(
    client: &Client,
    gateway: &Gateway,
    accepted: Verdict,
    programmed: Verdict,
    address: Option<String>,
) -> Result<(), Error> {
    let wanted = GatewayStatus {
        conditions: vec![
            condition(gateway, "Accepted", accepted),
            condition(gateway, "Programmed", programmed),
        ],
        addresses: address
            .into_iter()
            .map(|value| GatewayStatusAddress {
                type_: "IPAddress".to_owned(),
                value,
            })
            .collect(),
    };
    if gateway.status.as_ref() == Some(&wanted) {
        return Ok(());
    }
    let key = gateway_key(gateway);
    let addresses = if wanted.addresses.is_empty() {
        Value::Null
    } else {
        json!(wanted.addresses)
    };
    let api: Api<Gateway> =
        Api::namespaced(client.clone(), &gateway.namespace().unwrap_or_default());
    api.patch_status(
        &gateway.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": wanted.conditions, "addresses": addresses}})),
    )
    .await
    .map_err(failed("writing the status of", &format!("Gateway {key}")))?;
    debug!(gateway = %key, "status written");
    Ok(())
}
