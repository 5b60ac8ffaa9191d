//! Wiring: the mesh source and certificates (as weftd gets them), the data-plane workers,
//! mesh updates, and a drain on SIGTERM.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_core::config::{ConfigError, LoadedMesh};
use weft_core::discovery::source;
use weft_core::hbone::{self, ClientTlsProvider, Pool, no_mark};
use weft_core::identity::{self, CertificateManager, ControllerOptions, SpiffeId};
use weft_core::model::StateStore;
use weft_core::telemetry::{ConnectionMetrics, RequestMetrics};

use crate::routes::RouteTable;
use crate::traffic::TrafficTable;
use crate::{Waypoint, http, monitoring, spans, workers};

/// How often kept upstream connections are checked against their idle timeout.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct Options {
    pub mesh: PathBuf,
    pub manifests: Option<PathBuf>,
    pub kubernetes: bool,
    pub controller: Option<ControllerOptions>,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub listen: SocketAddr,
    /// Data-plane threads, each with its own HBONE socket (`workers`).
    pub workers: usize,
    pub monitoring: SocketAddr,
    pub admin: SocketAddr,
    pub drain_period: Duration,
    pub reload_interval: Duration,
    pub otlp_endpoint: Option<String>,
    pub trace_sampling: f64,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let shutdown = CancellationToken::new();
    let opened = source::open(
        opts.mesh.clone(),
        opts.manifests.clone(),
        opts.kubernetes,
        opts.reload_interval,
        &mut registry,
        &shutdown,
        &weft_core::discovery::cluster::WAYPOINT_KINDS,
    )
    .await?;
    let (source, loaded, client) = (opened.source, opened.first, opened.client);
    let trust_domain = loaded.state.trust_domain.clone();
    let identity = SpiffeId::new(&trust_domain, &opts.namespace, &opts.service_account)
        .context("the waypoint's identity (--namespace, --service-account)")?;
    let controller = match (&opts.controller, &client) {
        (Some(o), Some(c)) => Some((o, c)),
        _ => None,
    };
    let issuer = identity::issuer(&loaded, &opts.mesh, controller).await?;
    tracing::info!(%identity, "certificates from {}", issuer.origin);
    let certs = CertificateManager::new(issuer.provider, issuer.roots, trust_domain.clone())
        .context("building the trust bundle")?;
    certs.set_identities([identity.clone()]);
    let metrics = ConnectionMetrics::register(&mut registry);
    let requests = RequestMetrics::register(&mut registry);
    let namespace = identity.namespace().to_owned();
    let (routes_tx, routes) = tokio::sync::watch::channel(Arc::new(RouteTable::build(
        &loaded.state,
        &opts.name,
        &namespace,
        &RouteTable::default(),
    )));
    let (traffic_tx, traffic) = tokio::sync::watch::channel(Arc::new(TrafficTable::build(
        &loaded.state,
        &TrafficTable::default(),
    )));
    let settings = hbone::Settings::default();
    let pool = Pool::new(
        settings.clone(),
        Arc::new(certs.clone()) as Arc<dyn ClientTlsProvider>,
        no_mark(),
    );
    let exporter = match &opts.otlp_endpoint {
        Some(e) => {
            let resource = vec![
                ("service.name", "weft-waypoint".to_owned()),
                ("service.instance.id", opts.name.clone()),
                ("k8s.namespace.name", opts.namespace.clone()),
            ];
            let x = spans::Exporter::start(e, resource)?;
            tracing::info!(endpoint = %e, sampling = opts.trace_sampling, "exporting request spans over OTLP");
            Some(x)
        }
        None => None,
    };
    let wp = Arc::new(Waypoint {
        name: opts.name.clone(),
        identity: identity.clone(),
        certs,
        pool,
        state: StateStore::new(loaded.state),
        hbone: settings,
        metrics,
        requests,
        routes,
        traffic,
        clients: http::Clients::default(),
        spans: spans::Tracer {
            sampling: opts.trace_sampling,
            exporter,
        },
        http: std::sync::OnceLock::new(),
        tracker: TaskTracker::new(),
        force_close: CancellationToken::new(),
    });

    let _ = wp.http.set(http::stack(wp.clone()));

    {
        let wp = wp.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => wp.clients.sweep(),
                }
            }
        });
    }

    {
        let wp = wp.clone();
        let stop = shutdown.clone();
        let name = opts.name.clone();
        tokio::spawn(async move {
            let apply = |mesh: LoadedMesh, took: Duration| {
                if mesh.state.trust_domain != trust_domain {
                    tracing::error!(
                        "trustDomain changed from {trust_domain:?} to {:?}; this needs a restart. Keeping the last good mesh state",
                        mesh.state.trust_domain
                    );
                    return;
                }
                let applying = std::time::Instant::now();
                let table = RouteTable::build(&mesh.state, &name, &namespace, &routes_tx.borrow());
                let traffic = TrafficTable::build(&mesh.state, &traffic_tx.borrow());
                let old = wp.state.replace(mesh.state);
                forget_gone(&wp);
                let old_routes = routes_tx.send_replace(Arc::new(table));
                let old_traffic = traffic_tx.send_replace(Arc::new(traffic));
                // Freeing a large mesh takes milliseconds: not on a worker that carries
                // requests, and not in the reload's time.
                tokio::task::spawn_blocking(move || drop((old, old_routes, old_traffic)));
                tracing::info!(
                    load_ms = took.as_secs_f64() * 1e3,
                    apply_ms = applying.elapsed().as_secs_f64() * 1e3,
                    "mesh state updated"
                );
            };
            let refused =
                |e: &ConfigError| tracing::error!("{e}\nkeeping the last good mesh state");
            source.follow(stop, apply, refused).await;
        });
    }

    let monitor = TcpListener::bind(opts.monitoring)
        .await
        .with_context(|| format!("binding the monitoring port {}", opts.monitoring))?;
    let admin = TcpListener::bind(opts.admin)
        .await
        .with_context(|| format!("binding the admin port {}", opts.admin))?;
    tokio::spawn(monitoring::serve_admin(wp.clone(), admin, shutdown.clone()));
    tokio::spawn(monitoring::serve(
        Arc::new(monitoring::Monitoring {
            registry,
            wp: wp.clone(),
        }),
        monitor,
        shutdown.clone(),
    ));
    let workers = workers::start(wp.clone(), opts.listen, opts.workers, shutdown.clone())?;
    tracing::info!(name = %opts.name, %identity, hbone = %opts.listen, workers = opts.workers, "waypoint listening");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        "shutting down: no new connections, draining open ones for up to {:?}",
        opts.drain_period
    );
    shutdown.cancel();
    wp.tracker.close();
    if tokio::time::timeout(opts.drain_period, wp.tracker.wait())
        .await
        .is_err()
    {
        wp.force_close.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), wp.tracker.wait()).await;
    }
    tokio::task::spawn_blocking(move || workers.stop()).await?;
    Ok(())
}

/// Drops the metric series of workloads and Services that the mesh no longer has.
fn forget_gone(wp: &Waypoint) {
    let state = wp.state.current();
    let workloads = state.workload_names();
    let services: HashSet<&str> = state.services.iter().map(|s| s.hostname.as_str()).collect();
    let workload = |ns: &str, name: &str| workloads.contains(&(ns, name));
    wp.metrics.retain_workloads(workload);
    wp.requests.retain(workload, |host| services.contains(host));
}
