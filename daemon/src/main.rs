//! weftd, the weft node agent.

mod admin;
mod capture;
mod proxy;
mod run;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

#[derive(Parser)]
#[command(
    name = "weftd",
    version,
    about = "weft node agent: carries workload traffic over mutual-TLS HBONE tunnels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent.
    Run {
        /// The standalone mesh file (YAML).
        #[arg(long, env = "WEFT_MESH")]
        mesh: PathBuf,
        /// A directory of Kubernetes manifests (Namespace, Pod, Service, EndpointSlice,
        /// AuthorizationPolicy) that supplies the workloads, services and policies; the mesh
        /// file then holds only settings (nodes, CA). Edits apply without restart.
        #[arg(long, env = "WEFT_MANIFESTS", conflicts_with = "kubernetes")]
        manifests: Option<PathBuf>,
        /// Kubernetes mode: pods, services, EndpointSlices and policies from the API server
        /// (in-cluster service account, or KUBECONFIG); the mesh file holds only settings.
        #[arg(long, env = "WEFT_KUBERNETES")]
        kubernetes: bool,
        /// This node's name, as workloads in the mesh file (or pods' spec.nodeName) name it.
        #[arg(long, env = "WEFT_NODE")]
        node: String,
        /// This node's own IP (a DaemonSet's status.hostIP): where captured connections are
        /// redirected when the mesh file's ebpf.redirectAddress is left out.
        #[arg(long, env = "WEFT_NODE_IP")]
        node_ip: Option<std::net::Ipv4Addr>,
        /// Log filter (tracing EnvFilter syntax), e.g. `info` or `info,weft::access=off`.
        #[arg(long, env = "WEFT_LOG", default_value = "info")]
        log: String,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// How often to look for mesh-file edits.
        #[arg(long, default_value = "250ms", value_parser = humantime_duration)]
        reload_interval: Duration,
        /// Threads that run the proxy (default: one per two CPUs, at least one).
        #[arg(long, env = "WEFT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: Option<u16>,
        #[command(flatten)]
        controller: Box<weft_core::identity::ControllerOptions>,
        /// Kubernetes mode: weftd's own DaemonSet, NAMESPACE/NAME. When weftd stops and the
        /// DaemonSet is gone (or was deleted while weftd ran), this is an uninstall: capture is
        /// removed instead of left pinned for the next weftd.
        #[arg(long, env = "WEFT_UNINSTALL_WITH_DAEMONSET", requires = "kubernetes")]
        uninstall_with_daemonset: Option<String>,
    },
    /// Validate a mesh file and exit: 0 when valid, 1 with the bad fields listed.
    Check {
        #[arg(long)]
        mesh: PathBuf,
        /// Check the mesh file together with this manifests directory, as `run` would load them.
        #[arg(long)]
        manifests: Option<PathBuf>,
    },
    /// Certificate authority for standalone mode.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Transparent capture with eBPF.
    Capture {
        #[command(subcommand)]
        command: CaptureCommand,
    },
}

#[derive(Subcommand)]
enum CaptureCommand {
    /// Check that this machine can capture: root, cgroup2, bpffs, and every program accepted
    /// by the kernel verifier. Exits 1 naming what is missing.
    Check {
        /// cgroup2 mount (default: found under /sys/fs/cgroup).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// bpf file system for pinned programs and maps.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: PathBuf,
    },
    /// Remove everything capture installed: the pinned links (detaching every program), the
    /// pinned maps, and, in the current network namespace, the ip rule and local route table.
    /// Stop weftd first: while weftd is stopped, pinned capture fails closed; after this,
    /// pods' connections go direct again.
    Uninstall {
        /// The node's `ebpf.pinPath`.
        #[arg(long, default_value = "/sys/fs/bpf/weft")]
        pin_path: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Make a self-signed root CA (root-cert.pem, root-key.pem) in DIR, for local use.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Root certificate lifetime.
        #[arg(long, default_value = "3650days", value_parser = humantime_duration)]
        lifetime: Duration,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    weft_core::config::meshfile::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { mesh, manifests } => {
            match weft_core::config::MeshLoader::new(mesh.clone())
                .with_manifests(manifests)
                .load()
            {
                Ok(m) => {
                    println!(
                        "{}: valid ({} workloads, {} services, {} policies)",
                        mesh.display(),
                        m.state.workloads.len(),
                        m.state.services.len(),
                        m.state.policies.policies().len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Capture {
            command: CaptureCommand::Check { cgroup, bpffs },
        } => {
            let cgroup = cgroup
                .or_else(capture::check::find_cgroup2)
                .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
            if capture::check::run(&cgroup, &bpffs) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Capture {
            command: CaptureCommand::Uninstall { pin_path },
        } => match capture::uninstall::run(&pin_path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weftd capture uninstall: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ca {
            command: CaCommand::Init { dir, lifetime },
        } => match weft_core::identity::init_root_dir(&dir, lifetime) {
            Ok(files) => {
                println!(
                    "wrote {} and {}",
                    files.cert_path.display(),
                    files.key_path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weftd ca init: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            mesh,
            manifests,
            kubernetes,
            node,
            node_ip,
            log,
            log_format,
            reload_interval,
            worker_threads,
            controller,
            uninstall_with_daemonset,
        } => {
            let filter = match EnvFilter::try_new(&log) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("bad --log filter {log:?}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (filter, handle) = reload::Layer::new(filter);
            let registry = tracing_subscriber::registry().with(filter);
            match log_format {
                LogFormat::Text => registry
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_ansi(std::io::stderr().is_terminal())
                            .with_writer(std::io::stderr),
                    )
                    .init(),
                LogFormat::Json => registry
                    .with(
                        tracing_subscriber::fmt::layer()
                            .json()
                            .with_writer(std::io::stderr),
                    )
                    .init(),
            }
            let control: admin::LogControl = Box::new(move |level: &str| {
                let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(f).map_err(|e| e.to_string())
            });
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads.map_or_else(default_workers, usize::from))
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // A node agent asks on its pods' behalf.
            let controller = kubernetes.then_some(weft_core::identity::ControllerOptions {
                impersonate: true,
                ..*controller
            });
            let opts = run::RunOptions {
                mesh,
                manifests,
                kubernetes,
                controller,
                uninstall_with_daemonset,
                node,
                node_ip,
                reload_interval,
                log: control,
                log_level: log,
            };
            match runtime.block_on(run::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("weftd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One worker per two CPUs. Every byte weftd carries also costs the kernel's TCP work and the
/// workloads' own processes on the same node; on 2 CPUs one worker carried 21-31% more on one
/// stream and used a fifth less CPU per GB than two, which spent their time waking each other
/// (docs/architecture.md, "Where the data path's time goes").
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
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
