//! The daemon's HTTP surfaces: admin (loopback: readiness, config dump, log level), metrics
//! (Prometheus text) and readiness, each on its own configurable address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_core::telemetry::httpd::{self, reply};

use crate::proxy::Proxy;

/// Changes the log filter at run time; returns the error text for a bad filter.
pub type LogControl = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the last mesh-file reload did, for `/config_dump`.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    pub file: String,
    /// The manifests directory workloads, services and policies come from, if not the file.
    pub manifests: Option<String>,
    pub reloads: u64,
    pub refused: u64,
    pub last_error: Option<String>,
    /// The API-server source's watches, in Kubernetes mode.
    #[serde(skip)]
    pub kubernetes: Option<weft_core::discovery::cluster::SharedStatus>,
}

pub struct Admin {
    pub px: Arc<Proxy>,
    pub registry: Registry,
    pub log: LogControl,
    pub log_level: Mutex<String>,
    pub config: Mutex<ConfigStatus>,
    pub listeners: Mutex<Vec<String>>,
    /// All listeners bound.
    pub listening: AtomicBool,
    pub capture: Option<Arc<Mutex<crate::capture::ebpf::Capture>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Admin,
    Metrics,
    Readiness,
}

/// Connections one surface serves at once.
const MAX_CONNECTIONS: usize = 64;

pub async fn serve(
    admin: Arc<Admin>,
    listener: TcpListener,
    surface: Surface,
    stop: CancellationToken,
) {
    let route = move |req: Request<Incoming>| route(&admin, surface, req);
    httpd::serve(listener, MAX_CONNECTIONS, route, stop).await;
}

fn route(admin: &Admin, surface: Surface, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (surface, path) {
        (_, "/healthz/ready") => {
            let (ready, why) = readiness(admin);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "text/plain", why)
        }
        (Surface::Metrics | Surface::Admin, "/metrics") => httpd::metrics(&admin.registry),
        (Surface::Admin, "/config_dump") => match serde_json::to_vec_pretty(&config_dump(admin)) {
            Ok(body) => reply(StatusCode::OK, "application/json", body),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        (Surface::Admin, "/logging") => logging(admin, &req),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Ready when every listener is bound and every local identity has a valid certificate.
fn readiness(admin: &Admin) -> (bool, String) {
    if !admin.listening.load(Ordering::Acquire) {
        return (false, "listeners not bound\n".into());
    }
    let pending: Vec<String> = admin
        .px
        .certs
        .snapshot()
        .into_iter()
        .filter(|c| c.state != "valid")
        .map(|c| format!("{}: {}", c.identity, c.state))
        .collect();
    if pending.is_empty() {
        // Ready while the API server is gone: the last good state keeps carrying traffic,
        // and failing readiness would only stall a rollout. The body says what is stale.
        let stale = admin
            .config
            .lock()
            .ok()
            .and_then(|c| c.kubernetes.clone())
            .map(|k| k.lock().map(|k| k.stale()).unwrap_or_default())
            .unwrap_or_default();
        if stale.is_empty() {
            (true, "ready\n".into())
        } else {
            (
                true,
                format!(
                    "ready, serving the last good state; stale: {}\n",
                    stale.join("; ")
                ),
            )
        }
    } else {
        (
            false,
            format!("certificates not ready: {}\n", pending.join(", ")),
        )
    }
}

fn logging(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let level = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("level="))
            .map(|v| v.replace("%2C", ",").replace("%3D", "="))
    });
    let mut current = admin.log_level.lock().unwrap_or_else(|p| p.into_inner());
    match (req.method(), level) {
        (&Method::POST | &Method::PUT, Some(level)) => match (admin.log)(&level) {
            Ok(()) => {
                tracing::info!("log level set to {level:?}");
                *current = level.clone();
                reply(StatusCode::OK, "text/plain", format!("level={level}\n"))
            }
            Err(e) => reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("bad level {level:?}: {e}\n"),
            ),
        },
        (&Method::GET, None) => reply(StatusCode::OK, "text/plain", format!("level={current}\n")),
        _ => reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "GET /logging shows the level; POST /logging?level=<filter> sets it\n",
        ),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dump<'a> {
    node: &'a str,
    config: ConfigView,
    listeners: Vec<String>,
    hbone_pool: PoolDump,
    certificates: Vec<weft_core::identity::CertificateStatus>,
    capture: Option<crate::capture::ebpf::CaptureStatus>,
    #[serde(flatten)]
    state: weft_core::model::state::StateDump<'a>,
}

/// The config status with what follows from it, so no caller has to keep it in step.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigView {
    /// Where workloads, services and policies come from: `mesh-file`, `manifests` or
    /// `kubernetes`.
    source: &'static str,
    /// Whether the running state is the source's latest version: false after a refused one,
    /// or while a watch of the API server is failing.
    synced: bool,
    #[serde(flatten)]
    status: ConfigStatus,
    /// Each watched kind: listed, objects, restarts, relists, the current error.
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<weft_core::discovery::cluster::SourceStatus>,
}

impl ConfigView {
    fn of(status: ConfigStatus) -> Self {
        let kubernetes = status
            .kubernetes
            .as_ref()
            .map(|k| k.lock().unwrap_or_else(|p| p.into_inner()).clone());
        ConfigView {
            source: match (&kubernetes, &status.manifests) {
                (Some(_), _) => "kubernetes",
                (None, Some(_)) => "manifests",
                (None, None) => "mesh-file",
            },
            synced: status.last_error.is_none()
                && kubernetes.as_ref().is_none_or(|k| k.stale().is_empty()),
            status,
            kubernetes,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolDump {
    connections: usize,
    opened_total: u64,
}

fn config_dump(admin: &Admin) -> serde_json::Value {
    let state = admin.px.state.current();
    let dump = Dump {
        node: &admin.px.node,
        config: ConfigView::of(admin.config.lock().map(|c| c.clone()).unwrap_or_default()),
        listeners: admin
            .listeners
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default(),
        hbone_pool: PoolDump {
            connections: admin.px.pool.connections(),
            opened_total: admin.px.pool.opened_total(),
        },
        certificates: admin.px.certs.snapshot(),
        capture: admin
            .capture
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).status()),
        state: state.dump(),
    };
    serde_json::to_value(&dump).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::proxy::listeners::bind(addr)
}
