//! Where a binary's mesh versions come from: the mesh file (alone or with a manifests directory),
//! watched for edits, or the Kubernetes API server, watched by the cluster source. Either way
//! the first version is loaded before anything starts, and later ones go to the same `apply`
//! and `refused` callbacks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Problem;
use super::cluster::{self, Batching, SharedStatus, SourceMetrics};
use crate::config::{ConfigError, LoadedMesh, MeshLoader, MeshWatcher, Settings};

/// Why no first version could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    // kube's error already carries its whole chain.
    #[error(
        "connecting to the Kubernetes API server (in-cluster service account, or KUBECONFIG): {0}"
    )]
    Connect(kube::Error),
    #[error("the Kubernetes source stopped before its first version")]
    Stopped,
}

type ClusterVersion = Result<(LoadedMesh, Vec<Problem>), ConfigError>;

pub enum Source {
    Files(MeshWatcher),
    Cluster {
        versions: tokio::sync::mpsc::Receiver<(ClusterVersion, Duration)>,
        status: SharedStatus,
    },
}

pub struct Opened {
    pub source: Source,
    pub first: LoadedMesh,
    /// The API client, in Kubernetes mode.
    pub client: Option<kube::Client>,
}

/// Loads the first version. From the API server that means waiting, as long as it takes,
/// until every watched kind has been listed: a node serving a partial mesh (no policies yet)
/// would let through what the policies deny.
pub async fn open(
    mesh: PathBuf,
    manifests: Option<PathBuf>,
    kubernetes: bool,
    reload_interval: Duration,
    registry: &mut Registry,
    stop: &CancellationToken,
    kinds: &[super::Kind],
) -> Result<Opened, SourceError> {
    if !kubernetes {
        let mut loader = MeshLoader::new(mesh).with_manifests(manifests);
        let first = loader.load()?;
        return Ok(Opened {
            source: Source::Files(MeshWatcher::new(loader, reload_interval)),
            first,
            client: None,
        });
    }
    let settings = Settings::read(&mesh, "the Kubernetes API server")?;
    let status = cluster::new_status(kinds);
    let client = cluster::connect(&status)
        .await
        .map_err(SourceError::Connect)?;
    let metrics = SourceMetrics::register(registry);
    let mut versions = cluster::start(
        client.clone(),
        status.clone(),
        metrics,
        Batching::default(),
        stop.clone(),
        kinds,
        move |objects| {
            let started = Instant::now();
            (settings.from_cluster(objects), started.elapsed())
        },
    );
    let waiting = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), versions.recv()).await;
        match next {
            Ok(Some((Ok((first, problems)), _))) => {
                report(&status, problems);
                tracing::info!(
                    waited_ms = waiting.elapsed().as_millis() as u64,
                    "first version from the Kubernetes API server"
                );
                return Ok(Opened {
                    source: Source::Cluster { versions, status },
                    first,
                    client: Some(client),
                });
            }
            Ok(Some((Err(e), _))) => tracing::error!("{e}\nwaiting for a valid version"),
            Ok(None) => return Err(SourceError::Stopped),
            Err(_) => {
                let stale = status.lock().map(|s| s.stale()).unwrap_or_default();
                tracing::warn!(
                    "still waiting for the Kubernetes API server: {}",
                    stale.join("; ")
                );
            }
        }
    }
}

impl Source {
    pub fn cluster_status(&self) -> Option<SharedStatus> {
        match self {
            Source::Files(_) => None,
            Source::Cluster { status, .. } => Some(status.clone()),
        }
    }

    /// SIGHUP: reload the mesh file now (the API server's versions need no trigger).
    pub fn reload_trigger(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match self {
            Source::Files(w) => Some(w.trigger.clone()),
            Source::Cluster { .. } => None,
        }
    }

    /// Hands each later version to `apply` (invalid ones to `refused`) until `stop`.
    pub async fn follow(
        self,
        stop: CancellationToken,
        mut apply: impl FnMut(LoadedMesh, Duration),
        mut refused: impl FnMut(&ConfigError),
    ) {
        match self {
            Source::Files(watcher) => watcher.run(stop, apply, refused).await,
            Source::Cluster {
                mut versions,
                status,
            } => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    v = versions.recv() => v,
                };
                match next {
                    None => return,
                    Some((Ok((mesh, problems)), took)) => {
                        report(&status, problems);
                        apply(mesh, took);
                    }
                    Some((Err(e), _)) => refused(&e),
                }
            },
        }
    }
}

/// Objects with problems: logged when they first appear, listed in `/config_dump`.
fn report(status: &SharedStatus, problems: Vec<Problem>) {
    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    for p in problems.iter().filter(|p| !s.problems.contains(p)) {
        tracing::warn!("{p}");
    }
    s.problems = problems;
}
