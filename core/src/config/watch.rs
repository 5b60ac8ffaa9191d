//! Picks up mesh-file (and manifests-directory) edits without a restart.
//!
//! It polls the file's metadata instead of using inotify: editors replace files by rename and
//! Kubernetes ConfigMaps swap symlinks, and both defeat a watch on the original inode, while a
//! (modified time, length, inode) fingerprint catches every one of them at the cost of one
//! `stat` per interval.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::load::{ConfigError, LoadedMesh, MeshLoader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified_ns: i128,
    len: u64,
    inode: u64,
}

/// The mesh file's fingerprint, then each manifest's (a file added or removed changes the list).
fn fingerprints(mesh: &Path, manifests: Option<&Path>) -> Vec<(PathBuf, Option<Fingerprint>)> {
    let mut out = vec![(mesh.to_path_buf(), fingerprint(mesh))];
    if let Some(dir) = manifests {
        match crate::discovery::manifests::files(dir) {
            Ok(files) => out.extend(files.into_iter().map(|f| {
                let fp = fingerprint(&f);
                (f, fp)
            })),
            // An unreadable directory is a state of its own; the load reports why.
            Err(_) => out.push((dir.to_path_buf(), None)),
        }
    }
    out
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let md = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        len: md.len(),
        inode: md.ino(),
    })
}

/// Watches one mesh file. `apply` receives each valid new version (and how long loading it
/// took); invalid versions go to
/// `refused`, and the state built from the last valid one keeps running.
pub struct MeshWatcher {
    loader: MeshLoader,
    pub interval: Duration,
    /// Forces a reload at once (SIGHUP).
    pub trigger: std::sync::Arc<Notify>,
}

impl MeshWatcher {
    /// `loader` is the one that loaded the file the caller runs on, so the first reload can
    /// reuse its items.
    pub fn new(loader: MeshLoader, interval: Duration) -> Self {
        MeshWatcher {
            loader,
            interval,
            trigger: Default::default(),
        }
    }

    /// Runs until `cancel` fires. The file as it was when the caller loaded it is the baseline,
    /// so the first poll does not reload it again.
    pub async fn run(
        self,
        cancel: CancellationToken,
        mut apply: impl FnMut(LoadedMesh, std::time::Duration),
        mut refused: impl FnMut(&ConfigError),
    ) {
        let path: PathBuf = self.loader.path().to_path_buf();
        let manifests = self.loader.manifests().map(Path::to_path_buf);
        let mut loader = Some(self.loader);
        let mut applied = fingerprints(&path, manifests.as_deref());
        let mut seen = applied.clone();
        loop {
            let forced = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => false,
                _ = self.trigger.notified() => true,
            };
            let now = fingerprints(&path, manifests.as_deref());
            // A file rewritten in place can be caught half-written, and a half file may still
            // parse (with fewer policies). Load only once it has stopped changing for a poll.
            let settled = now == seen;
            seen = now.clone();
            if !forced && (now == applied || !settled) {
                continue;
            }
            applied = now;
            let started = std::time::Instant::now();
            // Parsing a large file takes a good part of a second: off the runtime's workers,
            // which carry traffic meanwhile.
            let mut current = loader
                .take()
                .unwrap_or_else(|| MeshLoader::new(path.clone()).with_manifests(manifests.clone()));
            let result = match tokio::task::spawn_blocking(move || {
                let result = current.load();
                (current, result)
            })
            .await
            {
                Ok((current, result)) => {
                    loader = Some(current);
                    result
                }
                Err(e) => Err(ConfigError::Read {
                    path: path.clone(),
                    source: std::io::Error::other(format!("loading stopped: {e}")),
                }),
            };
            match result {
                Ok(mesh) => apply(mesh, started.elapsed()),
                Err(e) => refused(&e),
            }
        }
    }
}
