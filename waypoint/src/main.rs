//! weft-waypoint: the proxy a namespace (or one service) binds to with
//! `weft.dev/use-waypoint=<name>`. It terminates HBONE with its own identity, serves the
//! services bound to it, and carries each connection to an endpoint over HBONE again.
//!
//! HTTP is served through the L7 layers (`http`: routes, retries, timeouts, authorization,
//! request telemetry); other traffic is relayed as TCP. See docs/architecture.md, "Waypoint".

mod http;
mod inbound;
mod monitoring;
mod protocol;
mod routes;
mod run;
mod spans;
mod traffic;
mod upstream;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;
use weft_core::hbone::{self, Pool};
use weft_core::identity::{CertificateManager, SpiffeId};
use weft_core::model::StateStore;
use weft_core::telemetry::{ConnectionMetrics, RequestMetrics};

/// Per-request allocations are the waypoint's largest cost; see docs/architecture.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Everything a connection handler needs, shared by all of them.
pub struct Waypoint {
    /// The waypoint's name, as services name it in `weft.dev/use-waypoint`.
    pub name: String,
    pub identity: SpiffeId,
    pub certs: CertificateManager,
    pub pool: Pool,
    pub state: StateStore,
    pub hbone: hbone::Settings,
    pub metrics: Arc<ConnectionMetrics>,
    pub requests: Arc<RequestMetrics>,
    /// The routes of the services bound here, compiled for each mesh version.
    pub routes: tokio::sync::watch::Receiver<Arc<routes::RouteTable>>,
    /// Traffic policy of every Service, compiled for each mesh version.
    pub traffic: tokio::sync::watch::Receiver<Arc<traffic::TrafficTable>>,
    /// HTTP connections to endpoints.
    pub clients: http::Clients,
    /// Trace propagation, sampling and span export.
    pub spans: spans::Tracer,
    /// The L7 layers, built once the waypoint exists (they hold it).
    pub http: std::sync::OnceLock<http::HttpService>,
    pub tracker: TaskTracker,
    /// Fires when the drain period is over: connections still open are closed.
    pub force_close: CancellationToken,
}

#[derive(Parser)]
#[command(
    name = "weft-waypoint",
    version,
    about = "weft waypoint: the proxy behind HBONE for the services bound to it"
)]
struct Cli {
    /// The mesh file (settings, and in standalone mode the CA and the mesh).
    #[arg(long, env = "WEFT_MESH")]
    mesh: PathBuf,
    /// Workloads, services and policies from this directory of Kubernetes manifests.
    #[arg(long, env = "WEFT_MANIFESTS", conflicts_with = "kubernetes")]
    manifests: Option<PathBuf>,
    /// Kubernetes mode: the mesh from the API server, certificates from weft-controller.
    #[arg(long, env = "WEFT_KUBERNETES")]
    kubernetes: bool,
    /// The waypoint's name (the Gateway's), as `weft.dev/use-waypoint` names it.
    #[arg(long, env = "WEFT_WAYPOINT_NAME")]
    name: String,
    /// The waypoint's namespace and service account: its identity.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// HBONE from the nodes.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:15008")]
    listen: SocketAddr,
    /// Data-plane threads, each with its own runtime and HBONE socket (Envoy's
    /// `--concurrency`). Default: one per core the process may use.
    #[arg(long, env = "WEFT_WORKERS", value_parser = worker_count)]
    workers: Option<usize>,
    /// `/metrics` and `/healthz/ready`.
    #[arg(long, env = "WEFT_MONITORING", default_value = "0.0.0.0:15021")]
    monitoring: SocketAddr,
    /// `/config_dump` (the mesh and the compiled routes): keep it on loopback.
    #[arg(long, env = "WEFT_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// How long open connections may finish after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    drain_period: Duration,
    /// How often to look for mesh-file edits.
    #[arg(long, default_value = "250ms", value_parser = humantime_duration)]
    reload_interval: Duration,
    /// Export request spans over OTLP/gRPC to this collector (`http://host:4317`); off when
    /// unset.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Of requests that start a trace, the percentage sampled (a request continuing a trace
    /// keeps its decision).
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value = "1", value_parser = weft_core::config::meshfile::parse_percentage)]
    trace_sampling: f64,
    /// Kubernetes mode: how to reach weft-controller.
    #[command(flatten)]
    controller: weft_core::identity::ControllerOptions,
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

fn worker_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number of threads from 1 to 1024")),
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    weft_core::config::meshfile::parse_duration(s)
}

fn main() -> ExitCode {
    // Huge pages would back the allocator's regions in 2 MiB steps: a third more resident
    // memory for a proxy whose working set is a few MiB (see the `mimalloc` dependency).
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weft-waypoint: --log {:?}: {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal: in a file or `kubectl logs` they break every field.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // The control plane's runtime; the data plane has its own threads (`workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft-waypoint: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let service_account = cli
        .service_account
        .clone()
        .unwrap_or_else(|| cli.name.clone());
    let options = run::Options {
        // `impersonate` stays false: a waypoint asks for its own identity, with its own token.
        controller: cli.kubernetes.then(|| cli.controller.clone()),
        mesh: cli.mesh,
        manifests: cli.manifests,
        kubernetes: cli.kubernetes,
        name: cli.name,
        namespace: cli.namespace,
        service_account,
        listen: cli.listen,
        workers: cli.workers.unwrap_or_else(workers::default_count),
        monitoring: cli.monitoring,
        admin: cli.admin,
        drain_period: cli.drain_period,
        reload_interval: cli.reload_interval,
        otlp_endpoint: cli.otlp_endpoint,
        trace_sampling: cli.trace_sampling,
    };
    match runtime.block_on(run::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weft-waypoint: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks its own rules (unique argument ids, among them) only when a command is
    /// built: fail here rather than at the first start.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
