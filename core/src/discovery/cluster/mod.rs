//! Kubernetes mode's source: the API server, watched with `kube-runtime` watchers, one per
//! kind, feeding an [`ObjectSet`] that is handed on as whole versions.
//!
//! - A watcher lists once, then watches from the list's resourceVersion. A dropped watch is
//!   resumed from the last version seen; only when the server says that version is gone (410)
//!   does it list again, and that list replaces the kind's objects (deletions missed meanwhile
//!   included). No event costs a relist.
//! - Errors back off (0.8 s doubling to 30 s) and never end the source; meanwhile the last
//!   version keeps serving and [`SourceStatus::stale`] says what is behind.
//! - Changes are gathered for a short quiet period (at most a longer bound) and then turned
//!   into one version, off the async workers, so that a burst (a rollout, a relist) costs one
//!   translation rather than one per object.
//! - Every kind is watched cluster-wide, pods included: a node needs every pod's identity and
//!   node to reach it, not only its own pods'. Pods are slimmed to what the translation reads.
//!   Service accounts are not watched: identity is the pod's `serviceAccountName`.

#[cfg(any(test, feature = "fake-api"))]
pub mod fake;
pub mod health;
mod slim;

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use health::{HealthLayer, KindStatus, SharedStatus, SourceStatus};

use super::crd::{AuthorizationPolicy, TrafficPolicyResource};
use super::gateway::{GRPCRoute, HTTPRoute, Listed};
use super::{Kind, Object, ObjectKey, ObjectSet};

/// The kinds every source watches (weftd's set).
pub const KINDS: [Kind; 5] = [
    Kind::Namespace,
    Kind::Pod,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::AuthorizationPolicy,
];

/// A waypoint's set: also the Gateway API routes, which only waypoints apply (the nodes never
/// watch them, so a cluster without the Gateway API CRDs runs weftd unchanged).
pub const WAYPOINT_KINDS: [Kind; 8] = [
    Kind::Namespace,
    Kind::Pod,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::AuthorizationPolicy,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::TrafficPolicy,
];

/// How long the source waits for a burst of changes to end before making a version, and the
/// most it waits under a steady stream of them.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub quiet: Duration,
    pub max_delay: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// `weft_discovery_*`: the control path's own health.
#[derive(Clone, Default)]
pub struct SourceMetrics {
    restarts: Family<KindLabel, Counter>,
    relists: Family<KindLabel, Counter>,
    objects: Family<KindLabel, Gauge>,
}

impl SourceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = SourceMetrics::default();
        let r = registry.sub_registry_with_prefix("weft_discovery");
        r.register(
            "watch_restarts",
            "Watch errors after which a watch was resumed or started over, by kind",
            m.restarts.clone(),
        );
        r.register(
            "relists",
            "Complete lists after the first (resourceVersion expired), by kind",
            m.relists.clone(),
        );
        r.register(
            "objects",
            "Objects the API-server source holds, by kind",
            m.objects.clone(),
        );
        m
    }

    fn label(kind: Kind) -> KindLabel {
        KindLabel {
            kind: kind.as_str(),
        }
    }
}

/// The API server's client, with [`HealthLayer`] under it: from the in-cluster service
/// account or the local kubeconfig, as `kubectl` finds them.
pub async fn connect(status: &SharedStatus) -> Result<Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&HealthLayer {
            status: status.clone(),
        })
        .build())
}

/// A client over a test's fake API server, with the same [`HealthLayer`].
#[cfg(any(test, feature = "fake-api"))]
pub fn client_over<S, B>(service: S, status: &SharedStatus) -> Client
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    kube::client::ClientBuilder::new(service, "default")
        .with_layer(&HealthLayer {
            status: status.clone(),
        })
        .build()
}

pub fn new_status(kinds: &[Kind]) -> SharedStatus {
    std::sync::Arc::new(std::sync::Mutex::new(SourceStatus::new(kinds)))
}

enum Change {
    Relisting(Kind),
    Listed(Kind, Vec<Object>),
    Applied(Box<Object>),
    Deleted(Kind, ObjectKey),
}

/// Starts the watchers and the batcher. Each version of the objects (once every kind has
/// been listed) goes through `load`, on a blocking thread, and the result to the receiver.
/// Everything stops when `cancel` fires or the receiver is dropped.
pub fn start<T: Send + 'static>(
    client: Client,
    status: SharedStatus,
    metrics: SourceMetrics,
    batching: Batching,
    cancel: CancellationToken,
    kinds: &[Kind],
    load: impl FnMut(&ObjectSet) -> T + Send + 'static,
) -> tokio::sync::mpsc::Receiver<T> {
    let (changes, rx) = mpsc::channel();
    let (versions, out) = tokio::sync::mpsc::channel(1);
    let w = Watching {
        changes,
        status: status.clone(),
        metrics: metrics.clone(),
        cancel: cancel.clone(),
    };
    w.spawn(
        Api::<Namespace>::all(client.clone()),
        Kind::Namespace,
        |mut o| {
            slim::meta(&mut o.metadata);
            Object::Namespace(o)
        },
    );
    w.spawn(Api::<Pod>::all(client.clone()), Kind::Pod, |mut o| {
        slim::pod(&mut o);
        Object::Pod(Box::new(o))
    });
    w.spawn(
        Api::<Service>::all(client.clone()),
        Kind::Service,
        |mut o| {
            slim::meta(&mut o.metadata);
            Object::Service(Box::new(o))
        },
    );
    w.spawn(
        Api::<EndpointSlice>::all(client.clone()),
        Kind::EndpointSlice,
        |mut o| {
            slim::meta(&mut o.metadata);
            Object::EndpointSlice(Box::new(o))
        },
    );
    w.spawn(
        Api::<AuthorizationPolicy>::all(client.clone()),
        Kind::AuthorizationPolicy,
        |mut o| {
            slim::meta(&mut o.metadata);
            Object::AuthorizationPolicy(Box::new(o))
        },
    );
    if kinds.contains(&Kind::HttpRoute) {
        w.spawn(
            Api::<Listed<HTTPRoute>>::all(client.clone()),
            Kind::HttpRoute,
            |o| {
                let mut o = o.decode();
                slim::meta(&mut o.metadata);
                Object::HttpRoute(Box::new(o))
            },
        );
    }
    if kinds.contains(&Kind::TrafficPolicy) {
        w.spawn(
            Api::<TrafficPolicyResource>::all(client.clone()),
            Kind::TrafficPolicy,
            |mut o| {
                slim::meta(&mut o.metadata);
                Object::TrafficPolicy(Box::new(o))
            },
        );
    }
    if kinds.contains(&Kind::GrpcRoute) {
        w.spawn(
            Api::<Listed<GRPCRoute>>::all(client),
            Kind::GrpcRoute,
            |o| {
                let mut o = o.decode();
                slim::meta(&mut o.metadata);
                Object::GrpcRoute(Box::new(o))
            },
        );
    }
    drop(w);
    let wanted = kinds.len();
    tokio::task::spawn_blocking(move || {
        batch(rx, status, metrics, batching, wanted, load, versions);
    });
    out
}

struct Watching {
    changes: mpsc::Sender<Change>,
    status: SharedStatus,
    metrics: SourceMetrics,
    cancel: CancellationToken,
}

impl Watching {
    fn spawn<K>(&self, api: Api<K>, kind: Kind, wrap: fn(K) -> Object)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let (changes, status, metrics, cancel) = (
            self.changes.clone(),
            self.status.clone(),
            self.metrics.clone(),
            self.cancel.clone(),
        );
        tokio::spawn(async move {
            // resourceVersion=0 lets the API server answer lists from its watch cache, as
            // client-go's informers do: a relist of every node at once stays cheap.
            let config = watcher::Config::default().any_semantic();
            let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            let mut buffer = Vec::new();
            let (mut listed, mut relisting) = (false, false);
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = events.next() => e,
                };
                let change = match event {
                    None => return,
                    Some(Ok(Event::Init)) => {
                        buffer.clear();
                        // A list that failed part way starts over with another Init: one
                        // relist, counted once, and none before the first list completed.
                        if !listed || relisting {
                            continue;
                        }
                        relisting = true;
                        metrics
                            .relists
                            .get_or_create(&SourceMetrics::label(kind))
                            .inc();
                        tracing::info!(%kind, "listing again: the watch could not be resumed");
                        Change::Relisting(kind)
                    }
                    Some(Ok(Event::InitApply(o))) => {
                        buffer.push(wrap(o));
                        continue;
                    }
                    Some(Ok(Event::InitDone)) => {
                        (listed, relisting) = (true, false);
                        Change::Listed(kind, std::mem::take(&mut buffer))
                    }
                    Some(Ok(Event::Apply(o))) => Change::Applied(Box::new(wrap(o))),
                    Some(Ok(Event::Delete(o))) => Change::Deleted(kind, wrap(o).key()),
                    Some(Err(e)) => {
                        let message = describe(kind, &e);
                        tracing::warn!(%kind, "watch failed, retrying with backoff: {message}");
                        metrics
                            .restarts
                            .get_or_create(&SourceMetrics::label(kind))
                            .inc();
                        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                        s.failed(kind, message);
                        if let Some(k) = s.kind_mut(kind) {
                            k.restarts += 1;
                        }
                        continue;
                    }
                };
                if changes.send(change).is_err() {
                    return;
                }
            }
        });
    }
}

/// The watcher's error, with the cause an operator most likely has to fix.
fn describe(kind: Kind, e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    let hint = match (status, kind) {
        (Some(404), Kind::AuthorizationPolicy | Kind::TrafficPolicy) => {
            " (is the CRD installed? see deploy/crds/ or the Helm chart)"
        }
        (Some(404), Kind::HttpRoute | Kind::GrpcRoute) => {
            " (are the Gateway API CRDs installed? a waypoint needs them)"
        }
        (Some(403), _) => " (check weftd's ClusterRole: it needs get, list and watch)",
        (Some(410), _) => " (resourceVersion expired; listing again)",
        _ => "",
    };
    format!("{e}{hint}")
}

fn batch<T>(
    changes: mpsc::Receiver<Change>,
    status: SharedStatus,
    metrics: SourceMetrics,
    batching: Batching,
    wanted: usize,
    mut load: impl FnMut(&ObjectSet) -> T,
    versions: tokio::sync::mpsc::Sender<T>,
) {
    let mut set = ObjectSet::default();
    let mut listed = HashSet::new();
    let mut pending: Option<Instant> = None;
    loop {
        let next = match pending {
            None => changes
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(since) => changes.recv_timeout(
                batching
                    .quiet
                    .min(batching.max_delay.saturating_sub(since.elapsed())),
            ),
        };
        match next {
            Ok(change) => {
                let kind = apply(&mut set, &mut listed, change, &status);
                metrics
                    .objects
                    .get_or_create(&SourceMetrics::label(kind))
                    .set(set.count(kind) as i64);
                let since = *pending.get_or_insert_with(Instant::now);
                if since.elapsed() < batching.max_delay {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        pending = None;
        if listed.len() < wanted {
            // The first version waits for every kind: a mesh without its policies would let
            // through what they deny.
            continue;
        }
        let version = load(&set);
        status.lock().unwrap_or_else(|p| p.into_inner()).versions += 1;
        if versions.blocking_send(version).is_err() {
            return;
        }
    }
}

/// Applies one change; the kind it touched.
fn apply(
    set: &mut ObjectSet,
    listed: &mut HashSet<Kind>,
    change: Change,
    status: &SharedStatus,
) -> Kind {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    let kind = match change {
        Change::Relisting(kind) => {
            if let Some(k) = s.kind_mut(kind) {
                k.relists += 1;
                k.listed = false;
            }
            return kind;
        }
        Change::Listed(kind, objects) => {
            set.clear(kind);
            for o in objects {
                set.upsert(o, "api".into());
            }
            listed.insert(kind);
            if let Some(k) = s.kind_mut(kind) {
                k.listed = true;
            }
            kind
        }
        Change::Applied(o) => {
            let kind = o.kind();
            set.upsert(*o, "api".into());
            kind
        }
        Change::Deleted(kind, key) => {
            set.remove(kind, &key);
            kind
        }
    };
    if let Some(k) = s.kind_mut(kind) {
        k.objects = set.count(kind);
    }
    kind
}

#[cfg(test)]
mod tests;
