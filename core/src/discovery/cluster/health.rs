//! What the source knows about each kind's watch: listed or not, objects held, restarts, and
//! the error it is failing with, if any.
//!
//! The watcher reports errors but not recoveries: a watch it resumes quietly after an outage
//! yields no event until an object changes. So the client's HTTP stack carries [`HealthLayer`],
//! which sees every list and watch response and clears a kind's error when its API answers
//! again. That keeps "stale" honest in both directions.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use serde::Serialize;

use crate::discovery::Kind;

/// One kind's watch, as `/config_dump` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindStatus {
    pub kind: Kind,
    /// A complete list has arrived since the watch last started over.
    pub listed: bool,
    pub objects: usize,
    /// Errors after which the watch was resumed or started over.
    pub restarts: u64,
    /// Lists after the first (410 Gone, or a watch that could not be resumed).
    pub relists: u64,
    pub error: Option<String>,
    /// Seconds since the Unix epoch when the current error began.
    pub failing_since: Option<u64>,
}

/// The API-server source as a whole.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub kinds: Vec<KindStatus>,
    /// Versions of the mesh state handed on.
    pub versions: u64,
    /// Objects the last version reported problems with (applied fail-closed or left out).
    pub problems: Vec<String>,
}

impl SourceStatus {
    pub fn new(kinds: &[Kind]) -> Self {
        SourceStatus {
            kinds: kinds
                .iter()
                .map(|&kind| KindStatus {
                    kind,
                    listed: false,
                    objects: 0,
                    restarts: 0,
                    relists: 0,
                    error: None,
                    failing_since: None,
                })
                .collect(),
            versions: 0,
            problems: Vec::new(),
        }
    }

    pub fn kind(&self, kind: Kind) -> Option<&KindStatus> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    pub(super) fn kind_mut(&mut self, kind: Kind) -> Option<&mut KindStatus> {
        self.kinds.iter_mut().find(|k| k.kind == kind)
    }

    /// Why the state being served may be behind the cluster; empty when it is not.
    pub fn stale(&self) -> Vec<String> {
        self.kinds
            .iter()
            .filter_map(|k| match (&k.error, k.listed) {
                (Some(e), _) => Some(format!("{} watch failing: {e}", k.kind)),
                (None, false) => Some(format!("{} not listed yet", k.kind)),
                (None, true) => None,
            })
            .collect()
    }

    pub(super) fn failed(&mut self, kind: Kind, error: String) {
        if let Some(k) = self.kind_mut(kind) {
            if k.error.is_none() {
                k.failing_since = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
            }
            k.error = Some(error);
        }
    }

    fn answered(&mut self, kind: Kind) {
        if let Some(k) = self.kind_mut(kind) {
            k.error = None;
            k.failing_since = None;
        }
    }
}

pub type SharedStatus = Arc<Mutex<SourceStatus>>;

/// The kind a list or watch request is for, from its path's last segment (the resource's
/// plural): `/api/v1/namespaces/shop/pods`, `/apis/discovery.k8s.io/v1/endpointslices`.
pub fn kind_of_path(path: &str) -> Option<Kind> {
    Some(match path.rsplit('/').next()? {
        "namespaces" => Kind::Namespace,
        "pods" => Kind::Pod,
        "services" => Kind::Service,
        "endpointslices" => Kind::EndpointSlice,
        "serviceaccounts" => Kind::ServiceAccount,
        "authorizationpolicies" => Kind::AuthorizationPolicy,
        "httproutes" => Kind::HttpRoute,
        "grpcroutes" => Kind::GrpcRoute,
        "trafficpolicies" => Kind::TrafficPolicy,
        _ => return None,
    })
}

/// Tower layer under `kube::Client` that marks a kind healthy when its API answers 2xx and
/// failing when it answers otherwise or cannot be reached.
#[derive(Clone)]
pub struct HealthLayer {
    pub status: SharedStatus,
}

impl<S> tower::Layer<S> for HealthLayer {
    type Service = HealthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HealthService {
            inner,
            status: self.status.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HealthService<S> {
    inner: S,
    status: SharedStatus,
}

impl<S, Req, B> tower::Service<http::Request<Req>> for HealthService<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let kind = kind_of_path(req.uri().path());
        let status = self.status.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await;
            if let Some(kind) = kind {
                let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                match &response {
                    Ok(r) if r.status().is_success() => s.answered(kind),
                    Ok(r) => s.failed(kind, format!("API server answered {}", r.status())),
                    Err(e) => s.failed(kind, format!("API server unreachable: {e}")),
                }
            }
            response
        })
    }
}
