//! weft-controller: the mesh CA, served over Istio's certificate protocol to weftd (and to
//! waypoints), with callers authenticated by TokenReview and node agents limited to the
//! identities of the pods on their own node. It also writes each AuthorizationPolicy's status,
//! and runs a waypoint (Deployment, Service, ServiceAccount) for each `weft-waypoint` Gateway.

mod authority;
mod follow;
mod gateways;
mod issue;
mod metrics;
mod policies;
mod routes;
mod run;
mod serve;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use authority::CaSource;
use issue::Lifetimes;
use issue::authz::NodeAgent;

#[derive(Parser)]
#[command(
    name = "weft-controller",
    version,
    about = "weft control plane: the mesh certificate authority for weftd and waypoints"
)]
struct Cli {
    /// The certificate service (gRPC over TLS).
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Metrics and readiness (`/metrics`, `/healthz/ready`).
    #[arg(long, env = "WEFT_MONITORING", default_value = "0.0.0.0:15014")]
    monitoring: SocketAddr,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The controller's namespace (the downward API's metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft")]
    namespace: String,
    /// The controller's service account: its identity in the serving certificate.
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT", default_value = "weft-controller")]
    service_account: String,
    /// The Service that fronts the controller; its DNS names go in the serving certificate.
    #[arg(long, env = "WEFT_SERVICE_NAME", default_value = "weft-controller")]
    service_name: String,
    /// Read the CA from this directory (`ca-cert.pem`, `ca-key.pem`, optional
    /// `cert-chain.pem`, `root-cert.pem`) instead of the CA Secret.
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// The Secret in the controller's namespace that holds the CA; created with a new
    /// self-signed root when missing.
    #[arg(long, env = "WEFT_CA_SECRET", default_value = "weft-ca")]
    ca_secret: String,
    /// The ConfigMap in the controller's namespace the root is published in.
    #[arg(long, env = "WEFT_ROOT_CONFIGMAP", default_value = "weft-ca-root")]
    root_configmap: String,
    /// Lifetime of a root the controller creates.
    #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
    root_lifetime: Duration,
    /// Workload certificate lifetime when the request asks for none.
    #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,
    /// The longest lifetime a request can get.
    #[arg(long, env = "WEFT_MAX_CERT_LIFETIME", default_value = "90d", value_parser = humantime::parse_duration)]
    max_cert_lifetime: Duration,
    /// Service accounts (NAMESPACE/NAME) allowed to request identities for the pods on their
    /// node: weftd's.
    #[arg(
        long = "node-agent",
        env = "WEFT_NODE_AGENTS",
        value_delimiter = ',',
        default_value = "weft/weftd"
    )]
    node_agents: Vec<NodeAgent>,
    /// Token audiences accepted (the audience of weftd's projected token).
    #[arg(
        long = "audience",
        env = "WEFT_AUDIENCES",
        value_delimiter = ',',
        default_value = "weft-ca"
    )]
    audiences: Vec<String>,
    /// The image of the waypoints run for `weft-waypoint` Gateways.
    #[arg(
        long,
        env = "WEFT_WAYPOINT_IMAGE",
        default_value = concat!("weft/weft-waypoint:", env!("CARGO_PKG_VERSION"))
    )]
    waypoint_image: String,
    /// Where waypoints export request spans over OTLP/gRPC (`http://collector.observability:4317`);
    /// tracing is off while this is unset or empty.
    #[arg(long, env = "WEFT_WAYPOINT_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    waypoint_otlp_endpoint: Option<String>,
    /// Of requests that start a trace, the percentage the waypoints sample (a request that
    /// continues a trace keeps its decision).
    #[arg(long, env = "WEFT_WAYPOINT_TRACE_SAMPLING", default_value = "1",
          value_parser = weft_core::config::meshfile::parse_percentage)]
    waypoint_trace_sampling: f64,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// An OTLP/gRPC collector address: `http://` or `https://`, a host, a port if not the scheme's.
/// Empty is accepted and means no tracing (the chart's default value).
fn otlp_endpoint(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    let uri: http::Uri = s.parse().map_err(|e| {
        format!("{s:?} is not a URL ({e}); an OTLP/gRPC collector is http://host:4317")
    })?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "{s:?}: an OTLP/gRPC collector is http://host:port or https://host:port"
        ));
    }
    Ok(s.to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weft-controller: --log {:?}: {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ns = cli.namespace.clone();
    // How pods reach the certificate service: the Service's port is the container's (the
    // chart's 15012).
    let ca_address = format!(
        "https://{}.{ns}.svc:{}",
        cli.service_name,
        cli.listen.port()
    );
    let options = run::Options {
        listen: cli.listen,
        monitoring: cli.monitoring,
        trust_domain: cli.trust_domain,
        dns_names: vec![
            format!("{}.{ns}.svc", cli.service_name),
            format!("{}.{ns}.svc.cluster.local", cli.service_name),
        ],
        ca: match cli.ca_dir {
            Some(dir) => CaSource::Files(dir),
            None => CaSource::Secret {
                namespace: ns.clone(),
                name: cli.ca_secret,
            },
        },
        namespace: ns,
        service_account: cli.service_account,
        root_configmap: cli.root_configmap,
        root_lifetime: cli.root_lifetime,
        lifetimes: Lifetimes {
            default: cli.cert_lifetime.min(cli.max_cert_lifetime),
            max: cli.max_cert_lifetime,
        },
        node_agents: cli.node_agents,
        audiences: cli.audiences,
        waypoint_image: cli.waypoint_image,
        ca_address,
        waypoint_tracing: cli.waypoint_otlp_endpoint.filter(|e| !e.is_empty()).map(
            |otlp_endpoint| gateways::Tracing {
                otlp_endpoint,
                sampling: cli.waypoint_trace_sampling,
            },
        ),
    };
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "no Kubernetes API access: {e} (in a pod, the service account is used; elsewhere, KUBECONFIG or ~/.kube/config)"
        )
    })?;
    let stop = CancellationToken::new();
    let mut running = run::start(options, client, stop.clone()).await?;
    info!(grpc = %running.grpc, monitoring = %running.monitoring, "weft-controller ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        ended = &mut running.task => {
            stop.cancel();
            return ended?;
        }
    }
    stop.cancel();
    running.task.await?
}
