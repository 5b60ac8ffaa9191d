//! `weftd run`: load the mesh file, start the proxies and the admin servers, follow mesh-file
//! edits, and drain on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_core::config::{CaptureKind, ConfigError, LoadedMesh};
use weft_core::hbone::{self, ClientTlsProvider, MarkFor, Pool, no_mark};
use weft_core::identity::CertificateManager;
use weft_core::model::{MeshState, StateStore};
use weft_core::telemetry::ConnectionMetrics;

use crate::admin::{self, Admin, ConfigStatus, LogControl, Surface};
use crate::capture::DestinationSource;
use crate::capture::bpf::ProgramSettings;
use crate::capture::ebpf::Capture;
use crate::capture::netlink::Routing;
use crate::proxy::Proxy;
use crate::proxy::listeners::{self, WorkloadListeners};

pub struct RunOptions {
    pub mesh: PathBuf,
    pub manifests: Option<PathBuf>,
    /// Workloads, services and policies from the API server; the mesh file holds settings.
    pub kubernetes: bool,
    /// Kubernetes mode: where certificates come from.
    pub controller: Option<weft_core::identity::ControllerOptions>,
    pub node: String,
    /// Kubernetes mode: the DaemonSet whose deletion means uninstall (capture removed on stop).
    pub uninstall_with_daemonset: Option<String>,
    /// The node's own IP: the redirect address when the mesh file names none.
    pub node_ip: Option<std::net::Ipv4Addr>,
    pub reload_interval: Duration,
    pub log: LogControl,
    pub log_level: String,
}

fn local_identities(state: &MeshState, node: &str) -> Vec<weft_core::identity::SpiffeId> {
    let mut ids: Vec<_> = state
        .local_workloads(node)
        .filter(|w| w.is_meshed())
        .map(|w| w.identity.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    raise_fd_limit();
    let mut registry = Registry::default();
    let shutdown = CancellationToken::new();
    let opened = weft_core::discovery::source::open(
        opts.mesh.clone(),
        opts.manifests.clone(),
        opts.kubernetes,
        opts.reload_interval,
        &mut registry,
        &shutdown,
        &weft_core::discovery::cluster::KINDS,
    )
    .await?;
    let (source, loaded, kube_client) = (opened.source, opened.first, opened.client);
    // As the file has it, to notice edits; `node` is what runs, with the node IP filled in.
    let node_file = loaded.node(&opts.node);
    let node = with_node_ip(node_file.clone(), opts.node_ip)?;
    let controller = match (&opts.controller, &kube_client) {
        (Some(options), Some(client)) => Some((options, client)),
        _ => None,
    };
    let issuer = weft_core::identity::issuer(&loaded, &opts.mesh, controller).await?;
    tracing::info!("workload certificates from {}", issuer.origin);
    let ca_files = issuer.local_ca.clone();
    let trust_domain = loaded.state.trust_domain.clone();
    let certs = CertificateManager::new(issuer.provider, issuer.roots, trust_domain.clone())
        .context("building the trust bundle")?;
    certs.set_identities(local_identities(&loaded.state, &node.name));

    let metrics = ConnectionMetrics::register(&mut registry);
    let settings = hbone::Settings {
        idle_timeout: node.hbone.idle_timeout,
        keepalive_interval: node.hbone.keepalive_interval,
        keepalive_timeout: node.hbone.keepalive_timeout,
        connect_timeout: node.hbone.connect_timeout,
        ..hbone::Settings::default()
    };
    // eBPF capture, when this node asks for it: programs attached and local workloads
    // enrolled before the outbound listener takes its first connection.
    let mut transparent = None;
    let capture = match (&node.capture, &node.ebpf) {
        (CaptureKind::Ebpf, Some(cfg)) => {
            let settings = ProgramSettings {
                weftd_mark: cfg.mark,
                outbound_port: node.listen.outbound.port(),
                hbone_port: loaded.state.hbone_port,
                plaintext_port: node.listen.inbound_plaintext_port,
                ..ProgramSettings::default()
            };
            let mut c = Capture::start(cfg, &settings).context("starting eBPF capture")?;
            // Inbound: transparent listeners for every enrolled pod's address, steered by
            // sk_lookup; bound before the programs can send them anything.
            let hbone_listener = listeners::bind_transparent(SocketAddr::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                loaded.state.hbone_port,
            ))
            .context("binding the transparent HBONE listener")?;
            let plaintext_listener = listeners::bind_transparent(SocketAddr::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                node.listen.inbound_plaintext_port,
            ))
            .context("binding the transparent plaintext listener")?;
            let routing = Routing::new(settings.capture_mark, crate::capture::netlink::TABLE)
                .context("opening netlink")?;
            c.start_inbound(&hbone_listener, &plaintext_listener, &routing)
                .await
                .context("starting inbound capture")?;
            c.reconcile(&loaded.state, &node.name);
            if let Some(stats) = c.take_stats() {
                registry.register_collector(Box::new(stats));
            }
            transparent = Some((hbone_listener, plaintext_listener));
            Some(Arc::new(Mutex::new(c)))
        }
        _ => None,
    };
    let (mark, destinations) = match (&capture, &node.ebpf) {
        (Some(c), Some(cfg)) => (
            Some(cfg.mark),
            DestinationSource::Ebpf(c.lock().unwrap_or_else(|p| p.into_inner()).destinations()),
        ),
        _ => (
            None,
            DestinationSource::ProxyProtocol {
                timeout: Duration::from_secs(5),
            },
        ),
    };
    let workload_count = loaded.state.workloads.len();
    let state = StateStore::new(loaded.state);
    let pool_marks: MarkFor = match (&node.capture, &node.ebpf) {
        (CaptureKind::Ebpf, Some(cfg)) => {
            let (own, capture_mark, store, me, node_ip) = (
                cfg.mark,
                ProgramSettings::default().capture_mark,
                state.clone(),
                node.name.clone(),
                std::net::IpAddr::V4(cfg.redirect_address),
            );
            Arc::new(move |addr: SocketAddr| {
                let local = store
                    .current()
                    .workload_by_ip(addr.ip())
                    .is_some_and(|w| w.node == me);
                if local {
                    (Some(capture_mark), Some(node_ip))
                } else {
                    (Some(own), None)
                }
            })
        }
        _ => no_mark(),
    };
    let pool = Pool::new(
        settings.clone(),
        Arc::new(certs.clone()) as Arc<dyn ClientTlsProvider>,
        pool_marks,
    );
    let px = Arc::new(Proxy {
        node: node.name.clone(),
        state: state.clone(),
        certs,
        pool,
        metrics,
        hbone: settings,
        mark,
        destinations,
        guard: crate::proxy::guard::SelfGuard {
            listeners: vec![
                node.listen.outbound,
                node.listen.admin,
                node.listen.metrics,
                node.listen.readiness,
            ],
            plaintext_port: node.listen.inbound_plaintext_port,
            node: node.name.clone(),
        },
        tracker: TaskTracker::new(),
        force_close: CancellationToken::new(),
    });

    let admin = Arc::new(Admin {
        px: px.clone(),
        registry,
        log: opts.log,
        log_level: Mutex::new(opts.log_level),
        config: Mutex::new(ConfigStatus {
            file: opts.mesh.display().to_string(),
            manifests: opts.manifests.as_ref().map(|d| d.display().to_string()),
            kubernetes: source.cluster_status(),
            ..Default::default()
        }),
        listeners: Mutex::new(Vec::new()),
        listening: Default::default(),
        capture: capture.clone(),
    });
    let l = &node.listen;
    for (addr, surface) in [
        (l.admin, Surface::Admin),
        (l.metrics, Surface::Metrics),
        (l.readiness, Surface::Readiness),
    ] {
        let listener =
            admin::bind(addr).with_context(|| format!("listening on {addr} ({surface:?})"))?;
        tokio::spawn(admin::serve(
            admin.clone(),
            listener,
            surface,
            shutdown.clone(),
        ));
    }
    let outbound = listeners::bind(l.outbound)
        .with_context(|| format!("listening on {} (outbound)", l.outbound))?;
    tokio::spawn(listeners::serve_outbound(
        px.clone(),
        outbound,
        shutdown.clone(),
    ));
    let workload_listeners = Arc::new(Mutex::new(WorkloadListeners::new(
        px.clone(),
        shutdown.clone(),
        l.inbound_plaintext_port,
    )));
    reconcile(&admin, &workload_listeners, l.outbound);
    if let Some((hbone_listener, plaintext_listener)) = transparent {
        tokio::spawn(listeners::serve_transparent(
            px.clone(),
            hbone_listener,
            plaintext_listener,
            shutdown.clone(),
        ));
    }
    // An address that could not be bound (not configured yet, still in use) is retried until
    // it can, not only at the next mesh edit.
    {
        let (admin, wl, stop, outbound) = (
            admin.clone(),
            workload_listeners.clone(),
            shutdown.clone(),
            l.outbound,
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                if !admin.listening.load(Ordering::Acquire) {
                    reconcile(&admin, &wl, outbound);
                }
            }
        });
    }
    tracing::info!(
        node = %node.name,
        mesh = %opts.mesh.display(),
        workloads = workload_count,
        outbound = %l.outbound,
        admin = %l.admin,
        "weftd started"
    );

    // Mesh-file edits, or the API server's changes.
    let reload_now = source.reload_trigger();
    {
        let admin = admin.clone();
        let px = px.clone();
        let node_settings = node_file;
        let ca_files = ca_files.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let apply = |mesh: LoadedMesh, load_time: Duration| {
                let applying = std::time::Instant::now();
                if mesh.state.trust_domain != trust_domain {
                    // Every identity would change at once and no certificate would match it:
                    // keep the running mesh, as for any other refused edit.
                    let e = format!(
                        "mesh file: trustDomain changed from {trust_domain:?} to {:?}; this needs a restart. Keeping the last good mesh state",
                        mesh.state.trust_domain
                    );
                    tracing::error!("{e}");
                    if let Ok(mut c) = admin.config.lock() {
                        c.refused += 1;
                        c.last_error = Some(e);
                    }
                    return;
                }
                if ca_files.is_some() && mesh.ca != ca_files {
                    tracing::warn!(
                        "the CA files changed in the mesh file; the new CA is used after the next restart"
                    );
                }
                if mesh.node(&node_settings.name) != node_settings {
                    tracing::warn!(
                        "this node's settings changed in the mesh file; they take effect at the next restart"
                    );
                }
                let summary = format!(
                    "{} workloads, {} services, {} policies",
                    mesh.state.workloads.len(),
                    mesh.state.services.len(),
                    mesh.state.policies.policies().len()
                );
                px.certs
                    .set_identities(local_identities(&mesh.state, &px.node));
                if let Some(c) = &capture {
                    c.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .reconcile(&mesh.state, &px.node);
                }
                let old = px.state.replace(mesh.state);
                // Freeing a mesh of 10 000 workloads takes tens of milliseconds: not on a
                // runtime worker that carries traffic, and not in the reload's latency.
                tokio::task::spawn_blocking(move || drop(old));
                let state = px.state.current();
                let alive = state.workload_names();
                px.metrics
                    .retain_workloads(|ns, name| alive.contains(&(ns, name)));
                reconcile(&admin, &workload_listeners, node_settings.listen.outbound);
                if let Ok(mut c) = admin.config.lock() {
                    c.reloads += 1;
                    c.last_error = None;
                }
                let apply_time = applying.elapsed();
                tracing::info!(
                    load_ms = load_time.as_secs_f64() * 1e3,
                    apply_ms = apply_time.as_secs_f64() * 1e3,
                    "mesh state updated: {summary}"
                );
            };
            let refused = |e: &ConfigError| {
                tracing::error!("{e}\nkeeping the last good mesh state");
                if let Ok(mut c) = admin.config.lock() {
                    c.refused += 1;
                    c.last_error = Some(e.to_string());
                }
            };
            source.follow(stop, apply, refused).await;
        });
    }

    // Kubernetes mode: an uninstall (weftd's DaemonSet deleted) removes capture at the stop.
    let uninstall_watch = match (&opts.uninstall_with_daemonset, &kube_client) {
        (Some(target), Some(client)) => {
            let (namespace, name) = target.split_once('/').with_context(|| {
                format!("--uninstall-with-daemonset {target:?}: expected NAMESPACE/NAME")
            })?;
            let deleted = crate::capture::uninstall::watch_daemonset(
                client,
                namespace,
                name,
                shutdown.clone(),
            );
            Some((namespace.to_owned(), name.to_owned(), deleted))
        }
        _ => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match &reload_now {
                Some(trigger) => trigger.notify_one(),
                None => tracing::info!("SIGHUP: nothing to reload, the API server's changes apply as they come"),
            },
        }
    }
    drain(&px, &shutdown, node.drain_period).await;
    if let (Some((namespace, daemonset, deleted)), Some(client), Some(ebpf)) =
        (&uninstall_watch, &kube_client, &node.ebpf)
    {
        let gone = deleted.load(Ordering::Relaxed)
            || crate::capture::uninstall::daemonset_gone(client, namespace, daemonset).await;
        if gone {
            // Unpinned, the links go with this process's descriptors when it exits.
            tracing::info!("DaemonSet {namespace}/{daemonset} is gone: removing capture");
            match crate::capture::uninstall::remove(&ebpf.pin_path).await {
                Ok(removed) => tracing::info!("capture removed: {}", removed.join(", ")),
                Err(e) => tracing::error!(
                    "removing capture failed ({e:#}); run `weftd capture uninstall` on this node"
                ),
            }
        }
    }
    Ok(())
}

/// Fills in the eBPF redirect address the mesh file leaves to the node (`0.0.0.0`).
fn with_node_ip(
    mut node: weft_core::config::NodeFile,
    node_ip: Option<std::net::Ipv4Addr>,
) -> anyhow::Result<weft_core::config::NodeFile> {
    if let Some(ebpf) = node.ebpf.as_mut()
        && node.capture == CaptureKind::Ebpf
        && ebpf.redirect_address.is_unspecified()
    {
        let Some(ip) = node_ip else {
            anyhow::bail!(
                "node {}: eBPF capture needs a redirect address: set ebpf.redirectAddress in the mesh file, or give weftd --node-ip (WEFT_NODE_IP)",
                node.name
            );
        };
        ebpf.redirect_address = ip;
    }
    Ok(node)
}

/// Every proxied connection holds a descriptor or two: a node proxy must not stop at the
/// 1024 a shell gives by default. The soft limit is raised to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-parameter for getrlimit and is only read by setrlimit.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if !raised {
        tracing::warn!(
            "could not raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Binds and unbinds workload listeners for the current state and publishes the result.
fn reconcile(admin: &Admin, wl: &Mutex<WorkloadListeners>, outbound: std::net::SocketAddr) {
    let mut wl = wl.lock().unwrap_or_else(|p| p.into_inner());
    let failed = wl.reconcile(&admin.px.state.current());
    let mut all = vec![format!("{outbound} Outbound")];
    all.extend(wl.addresses());
    if let Ok(mut l) = admin.listeners.lock() {
        *l = all;
    }
    admin.listening.store(failed == 0, Ordering::Release);
}

/// Stop accepting, let open connections finish for `period`, then close what is left.
async fn drain(px: &Proxy, shutdown: &CancellationToken, period: Duration) {
    tracing::info!("shutting down: no new connections, draining open ones for up to {period:?}");
    shutdown.cancel();
    px.tracker.close();
    if tokio::time::timeout(period, px.tracker.wait())
        .await
        .is_err()
    {
        tracing::info!("drain period over; closing the connections still open");
        px.force_close.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), px.tracker.wait()).await;
    }
    tracing::info!("weftd stopped");
}
