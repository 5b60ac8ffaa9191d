//! Capture's state in bpffs: maps under `<pinPath>/maps`, links under `<pinPath>/links`.
//!
//! Pinned links keep the programs attached while weftd is down, so capture fails closed (a
//! redirected connect finds no listener, a SYN to an enrolled pod finds no socket) instead of
//! silently letting pods talk in clear text. A restarted weftd reuses the pinned maps (who is
//! enrolled, original destinations, counters) and replaces each link by pinning its own under
//! a temporary name and renaming it over the old one: the old program is detached in the same
//! step, so there is no moment without capture.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;

use super::check::{BPF_FS_MAGIC, fs_magic};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{path} is not on a bpffs mount (mount one with `mount -t bpf bpf /sys/fs/bpf`, or set nodes[].ebpf.pinPath)"
    )]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error(
        "pinned map {path} has another layout than this weftd's programs ({found}, expected {expected}); it was left by another weftd version: run `weftd capture uninstall --pin-path {root}` first"
    )]
    Incompatible {
        path: PathBuf,
        root: PathBuf,
        found: String,
        expected: String,
    },
    #[error("reading pinned map {path}: {source}")]
    MapInfo {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("parsing the capture object: {0}")]
    Object(#[from] aya_obj::ParseError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The pin directory of one node's capture.
pub struct PinDir {
    root: PathBuf,
    /// Links pinned (or re-pinned) by this process; the others are left-overs.
    current: HashSet<String>,
}

impl PinDir {
    /// Checks that `root` is (or would be) on bpffs and creates `maps/` and `links/` in it.
    pub fn open(root: &Path) -> Result<Self, PinError> {
        on_bpffs(root)?;
        for sub in ["maps", "links"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(PinDir {
            root: root.to_path_buf(),
            current: HashSet::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn link_path(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    /// A link name for an attach point: bpffs refuses names with a dot (`eth0.100`), so dots
    /// (and the escape character) are percent-encoded.
    pub fn link_name(kind: &str, target: &str) -> String {
        format!("{kind}-{}", target.replace('%', "%25").replace('.', "%2e"))
    }

    /// Names of the links pinned now (left by a previous weftd, or by this one).
    pub fn links(&self) -> Vec<String> {
        names(&self.root.join("links"))
    }

    /// Whether a previous weftd left maps here that this one will reuse.
    pub fn has_maps(&self) -> bool {
        !names(&self.maps()).is_empty()
    }

    /// Refuses pinned maps whose type or sizes differ from `object`'s: reusing them would
    /// make the programs read garbage.
    pub fn check_maps(&self, object: &[u8]) -> Result<(), PinError> {
        let obj = aya_obj::Object::parse(object)?;
        for (name, def) in &obj.maps {
            if def.pinning() != aya_obj::maps::PinningType::ByName {
                continue;
            }
            let path = self.maps().join(name);
            if !path.exists() {
                continue;
            }
            let info = aya::maps::MapInfo::from_pin(&path).map_err(|source| PinError::MapInfo {
                path: path.clone(),
                source,
            })?;
            let found = (
                info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
                info.key_size(),
                info.value_size(),
                info.max_entries(),
            );
            let expected = (
                def.map_type(),
                def.key_size(),
                def.value_size(),
                def.max_entries(),
            );
            if found != expected {
                let show = |(t, k, v, m): (u32, u32, u32, u32)| {
                    format!("type {t}, key {k} B, value {v} B, {m} entries")
                };
                return Err(PinError::Incompatible {
                    path,
                    root: self.root.clone(),
                    found: show(found),
                    expected: show(expected),
                });
            }
        }
        Ok(())
    }

    /// Pins `link` as `name`, replacing (and so detaching) a link pinned there before, with
    /// no gap between the two.
    pub fn replace_link(&mut self, name: &str, link: FdLink) -> Result<(), PinError> {
        let path = self.link_path(name);
        let tmp = self.link_path(&format!("new-{name}"));
        let _ = std::fs::remove_file(&tmp);
        link.pin(&tmp).map_err(|source| PinError::Pin {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        self.current.insert(name.to_string());
        Ok(())
    }

    /// Unpins (and so detaches) link `name`.
    pub fn remove_link(&mut self, name: &str) -> Result<(), PinError> {
        self.current.remove(name);
        let path = self.link_path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Unpins the links a previous weftd left that this one did not replace (an interface
    /// that is gone, a program this version no longer has). Returns their names.
    pub fn remove_leftovers(&mut self) -> Vec<String> {
        let stale: Vec<String> = self
            .links()
            .into_iter()
            .filter(|n| !self.current.contains(n))
            .collect();
        for name in &stale {
            if let Err(e) = self.remove_link(name) {
                tracing::warn!("removing a left-over capture link: {e}");
            }
        }
        stale
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// `path`, or its nearest existing ancestor, is on bpffs. Checked before creating anything so
/// that a wrong path leaves no directories behind on another file system.
fn on_bpffs(path: &Path) -> Result<(), PinError> {
    let existing = path.ancestors().find(|p| p.exists());
    match existing.and_then(fs_magic) {
        Some(BPF_FS_MAGIC) => Ok(()),
        _ => Err(PinError::NotBpffs {
            path: path.to_path_buf(),
        }),
    }
}

/// What `weftd capture uninstall` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Unpins every link (detaching the programs) and map under `root`, then removes the
/// directories. A missing `root` is not an error: there is nothing to remove.
pub fn uninstall(root: &Path) -> Result<Removed, PinError> {
    if !root.exists() {
        return Ok(Removed::default());
    }
    on_bpffs(root)?;
    let mut removed = Removed::default();
    // Links first: once they are gone no program uses the maps.
    for (sub, list) in [("links", &mut removed.links), ("maps", &mut removed.maps)] {
        let dir = root.join(sub);
        for name in names(&dir) {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(io(&path))?;
            list.push(name);
        }
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&dir)(e)),
            _ => {}
        }
    }
    std::fs::remove_dir(root).map_err(io(root))?;
    Ok(removed)
}
