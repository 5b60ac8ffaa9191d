//! Wiring: load the CA, publish its root, bind the ports, serve until stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weft_core::identity::SpiffeId;

use crate::authority::{self, CaSource};
use crate::issue::authn::TokenReviewer;
use crate::issue::authz::{NodeAgent, NodeAuthorizer};
use crate::issue::{CertificateService, Lifetimes};
use crate::metrics::{IssueMetrics, Monitoring};
use crate::serve::{self, Serving};

/// Everything the controller is configured with.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub monitoring: SocketAddr,
    pub trust_domain: String,
    /// The controller's own namespace and service account: its identity, and where the CA
    /// Secret and root ConfigMap live.
    pub namespace: String,
    pub service_account: String,
    /// Extra DNS names for the serving certificate (the Service's names).
    pub dns_names: Vec<String>,
    pub ca: CaSource,
    pub root_configmap: String,
    pub root_lifetime: Duration,
    pub lifetimes: Lifetimes,
    pub node_agents: Vec<NodeAgent>,
    pub audiences: Vec<String>,
    /// The image of the waypoint Deployments the controller makes for waypoint Gateways.
    pub waypoint_image: String,
    /// The certificate service as pods reach it (the Service's address), given to waypoints.
    pub ca_address: String,
    /// Request tracing in the waypoints; off when none.
    pub waypoint_tracing: Option<crate::gateways::Tracing>,
}

/// A running controller.
pub struct Running {
    pub grpc: SocketAddr,
    pub monitoring: SocketAddr,
    /// Ends when `stop` fires (Ok) or when any part stopped on its own (Err naming it): the
    /// process must then exit rather than look healthy while not serving.
    pub task: JoinHandle<anyhow::Result<()>>,
}

pub async fn start(
    options: Options,
    client: Client,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    let identity = SpiffeId::new(
        &options.trust_domain,
        &options.namespace,
        &options.service_account,
    )
    .context("the controller's own identity")?;
    let mut registry = Registry::default();
    let metrics = IssueMetrics::register(&mut registry);
    let reconcile_errors = crate::metrics::register_reconcile_errors(&mut registry);
    let monitoring = Arc::new(Monitoring {
        registry,
        ready: false.into(),
    });
    let monitoring_listener = TcpListener::bind(options.monitoring)
        .await
        .with_context(|| format!("binding the monitoring port {}", options.monitoring))?;
    let monitoring_addr = monitoring_listener.local_addr()?;
    let monitoring_task = tokio::spawn(crate::metrics::serve(
        monitoring.clone(),
        monitoring_listener,
        stop.clone(),
    ));

    let loaded = authority::load(&options.ca, &client, options.root_lifetime).await?;
    info!(origin = %loaded.origin, "loaded the mesh CA");
    let ca = Arc::new(loaded.ca);
    authority::publish_root(&client, &options.namespace, &options.root_configmap, &ca).await?;

    let serving = Arc::new(Serving::new(
        ca.clone(),
        identity.clone(),
        options.dns_names.clone(),
        options.lifetimes.default,
    )?);
    let service = CertificateService::new(
        ca,
        options.trust_domain.clone(),
        TokenReviewer::new(
            client.clone(),
            options.audiences.clone(),
            options.trust_domain.clone(),
        ),
        NodeAuthorizer::new(
            client.clone(),
            options.node_agents.clone(),
            identity.clone(),
        ),
        options.lifetimes,
        metrics,
    );
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding the certificate service port {}", options.listen))?;
    let grpc = listener.local_addr()?;
    info!(%grpc, %identity, "certificate service listening");
    let policies = tokio::spawn(crate::policies::run(client.clone(), stop.clone()));
    let waypoints = crate::gateways::Waypoints {
        image: options.waypoint_image.clone(),
        trust_domain: options.trust_domain.clone(),
        ca_address: options.ca_address.clone(),
        controller_namespace: options.namespace.clone(),
        controller_identity: identity.to_string(),
        audience: options
            .audiences
            .first()
            .cloned()
            .unwrap_or_else(|| "weft-ca".to_owned()),
        cert_lifetime: options.lifetimes.default,
        tracing: options.waypoint_tracing.clone(),
    };
    let routes = tokio::spawn(crate::routes::run(
        client.clone(),
        reconcile_errors.clone(),
        stop.clone(),
    ));
    let access = tokio::spawn(crate::gateways::access::run(
        client.clone(),
        reconcile_errors.clone(),
        stop.clone(),
    ));
    let gateways = tokio::spawn(crate::gateways::run(
        client,
        waypoints,
        reconcile_errors,
        stop.clone(),
    ));
    let grpc_task = tokio::spawn(serve::serve(listener, serving, service, stop.clone()));
    monitoring.ready.store(true, Ordering::Relaxed);
    let task = tokio::spawn(async move {
        let which = tokio::select! {
            r = grpc_task => match r {
                Ok(Ok(())) => "the certificate service",
                Ok(Err(e)) => return Err(anyhow::anyhow!("the certificate service failed: {e}")),
                Err(e) => return Err(anyhow::anyhow!("the certificate service panicked: {e}")),
            },
            _ = policies => "the policy status writer",
            _ = gateways => "the waypoint reconciler",
            _ = access => "the waypoint access keeper",
            _ = routes => "the route status writer",
            _ = monitoring_task => "the monitoring server",
        };
        if stop.is_cancelled() {
            Ok(())
        } else {
            anyhow::bail!("{which} stopped on its own")
        }
    });
    Ok(Running {
        grpc,
        monitoring: monitoring_addr,
        task,
    })
}
