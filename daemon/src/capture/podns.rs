//! Finding a local pod's network namespace from its UID, without a CNI plugin.
//!
//! The kubelet puts every pod in a cgroup named after the pod's UID, and all processes of a pod
//! share its network namespace, so any live process in that cgroup leads to the namespace through
//! `/proc/PID/ns/net`. Only cgroup v2 is supported: one unified hierarchy means one place to look.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Kubernetes UIDs are 36-character UUIDs; the slack allows other UID formats without allowing
/// anything that could name a path outside the pod's cgroup.
const UID_MAX_LEN: usize = 64;

/// How many levels below the pod cgroup are searched: container cgroups are the first level, and
/// some runtimes nest one more (e.g. a container's own init sub-cgroup).
const SEARCH_DEPTH: usize = 2;

/// Where pods' cgroups live, and where /proc is (both configurable so tests use fixture trees).
pub struct PodNetnsFinder {
    kubepods: PathBuf,
    proc_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PodNetnsError {
    #[error("no kubepods cgroup v2: tried {} and {}", .tried[0].display(), .tried[1].display())]
    NoKubepods { tried: [PathBuf; 2] },
    #[error("pod {uid}: no cgroup under {}", .kubepods.display())]
    NoPodCgroup { uid: String, kubepods: PathBuf },
    #[error("pod {uid}: no live process in {} or below", .cgroup.display())]
    NoProcess { uid: String, cgroup: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Debug-formatted because the value came from outside and may contain anything.
    #[error("not a Kubernetes UID: {0:?}")]
    BadUid(String),
}

impl PodNetnsFinder {
    pub fn new(kubepods: PathBuf, proc_root: PathBuf) -> Self {
        Self {
            kubepods,
            proc_root,
        }
    }

    /// The kubepods root under a cgroup2 mount: `kubepods.slice` (systemd cgroup driver) or
    /// `kubepods` (cgroupfs driver). Error naming both paths tried when neither exists.
    pub fn discover(cgroup_mount: &Path) -> Result<PathBuf, PodNetnsError> {
        let tried = [
            cgroup_mount.join("kubepods.slice"),
            cgroup_mount.join("kubepods"),
        ];
        for path in &tried {
            if is_dir(path)? {
                return Ok(path.clone());
            }
        }
        Err(PodNetnsError::NoKubepods { tried })
    }

    pub fn kubepods(&self) -> &Path {
        &self.kubepods
    }

    /// The network namespace path (`<proc_root>/<pid>/ns/net`) of the pod with this UID.
    ///
    /// Breadth first, so a process of the pod cgroup itself or of a container wins over deeper
    /// ones; any of them will do, as they all share the pod's namespace.
    pub fn netns_of(&self, pod_uid: &str) -> Result<PathBuf, PodNetnsError> {
        check_uid(pod_uid)?;
        let cgroup = self.pod_cgroup(pod_uid)?;
        let mut level = vec![cgroup.clone()];
        for depth in 0..=SEARCH_DEPTH {
            let mut next = Vec::new();
            for dir in &level {
                if let Some(netns) = self.first_live_netns(dir)? {
                    return Ok(netns);
                }
                if depth < SEARCH_DEPTH {
                    next.extend(child_dirs(dir)?);
                }
            }
            level = next;
        }
        Err(PodNetnsError::NoProcess {
            uid: pod_uid.to_owned(),
            cgroup,
        })
    }

    /// Only the few places the kubelet can put a pod are checked: a walk of the whole tree would
    /// cost time proportional to every container on the node, for each pod.
    fn pod_cgroup(&self, uid: &str) -> Result<PathBuf, PodNetnsError> {
        // systemd reads `-` in a slice name as nesting, so the kubelet writes the UID with `_`.
        let uid_ = uid.replace('-', "_");
        let k = &self.kubepods;
        let candidates = [
            k.join(format!("kubepods-pod{uid_}.slice")),
            k.join("kubepods-burstable.slice")
                .join(format!("kubepods-burstable-pod{uid_}.slice")),
            k.join("kubepods-besteffort.slice")
                .join(format!("kubepods-besteffort-pod{uid_}.slice")),
            k.join(format!("pod{uid}")),
            k.join("burstable").join(format!("pod{uid}")),
            k.join("besteffort").join(format!("pod{uid}")),
        ];
        for path in candidates {
            if is_dir(&path)? {
                return Ok(path);
            }
        }
        Err(PodNetnsError::NoPodCgroup {
            uid: uid.to_owned(),
            kubepods: k.clone(),
        })
    }

    /// The netns of the first process listed in `dir/cgroup.procs` that still exists. Processes
    /// come and go while we look, so a vanished one is not an error, and neither is a line that
    /// is not a PID: only being unable to look at all is.
    fn first_live_netns(&self, dir: &Path) -> Result<Option<PathBuf>, PodNetnsError> {
        let procs = dir.join("cgroup.procs");
        let text = match fs::read_to_string(&procs) {
            Ok(text) => text,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(io_error(procs, e)),
        };
        let pids = text
            .lines()
            .filter_map(|line| line.trim().parse::<u32>().ok())
            .filter(|&pid| pid != 0);
        for pid in pids {
            let netns = self.proc_root.join(pid.to_string()).join("ns").join("net");
            match fs::metadata(&netns) {
                Ok(_) => return Ok(Some(netns)),
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(io_error(netns, e)),
            }
        }
        Ok(None)
    }
}

/// The UID comes from the API server and ends up in a path: hex and dashes cannot contain `/` or
/// `..`, so it can only ever name a direct child of the directories we check.
fn check_uid(uid: &str) -> Result<(), PodNetnsError> {
    let ok = !uid.is_empty()
        && uid.len() <= UID_MAX_LEN
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PodNetnsError::BadUid(uid.to_owned()))
    }
}

/// Sorted so the choice of process does not depend on directory order. Symbolic links are not
/// followed: nothing in a cgroup tree should lead out of it.
fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>, PodNetnsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_gone(&e) => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir.to_owned(), e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir.to_owned(), e))?;
        match entry.file_type() {
            Ok(t) if t.is_dir() => dirs.push(entry.path()),
            Ok(_) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(io_error(entry.path(), e)),
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Unlike `Path::is_dir`, a permission problem is reported rather than read as "absent", which
/// would send the operator looking for a missing pod instead of missing privileges.
fn is_dir(path: &Path) -> Result<bool, PodNetnsError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path.to_owned(), e)),
    }
}

/// What a process that has exited (`ESRCH` for a zombie's namespace links) or a cgroup removed
/// under us (`ENODEV` on its open files) looks like, besides plain absence.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENODEV))
}

fn io_error(path: PathBuf, source: io::Error) -> PodNetnsError {
    PodNetnsError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const UID: &str = "0f3c8a52-1b2d-4e5f-9a0b-123456789abc";
    const UID_: &str = "0f3c8a52_1b2d_4e5f_9a0b_123456789abc";
    const OTHER_UID: &str = "11111111-2222-3333-4444-555555555555";

    /// A fixture root holding `cgroup/` and `proc/`, removed when dropped (even on panic).
    struct Fixture(PathBuf);

    impl Fixture {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let root = std::env::temp_dir().join(format!("weftd-podns-{}-{n}", std::process::id()));
            fs::create_dir_all(root.join("cgroup")).unwrap();
            fs::create_dir_all(root.join("proc")).unwrap();
            Self(root)
        }
        fn cgroup(&self) -> PathBuf {
            self.0.join("cgroup")
        }
        fn proc(&self) -> PathBuf {
            self.0.join("proc")
        }
        /// `{u}` and `{u_}` in `rel` stand for the test UID with dashes and with underscores.
        fn write_procs(&self, rel: &str, pids: &str) {
            let rel = rel.replace("{u_}", UID_).replace("{u}", UID);
            let dir = self.cgroup().join(rel);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.procs"), pids).unwrap();
        }
        fn live(&self, pid: u32) {
            let ns = self.proc().join(pid.to_string()).join("ns");
            fs::create_dir_all(&ns).unwrap();
            fs::write(ns.join("net"), "").unwrap();
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[rustfmt::skip]
    #[derive(Debug)]
    enum Want { Pid(u32), NoPodCgroup, NoProcess, BadUid }

    struct Case {
        name: &'static str,
        procs: &'static [(&'static str, &'static str)],
        live: &'static [u32],
        uid: &'static str,
        want: Want,
    }

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        Case { name: "systemd guaranteed", procs: &[("kubepods.slice/kubepods-pod{u_}.slice/cri-containerd-aa.scope", "41\n")], live: &[41], uid: UID, want: Want::Pid(41) },
        Case { name: "systemd burstable", procs: &[("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u_}.slice/cri-containerd-aa.scope", "42\n")], live: &[42], uid: UID, want: Want::Pid(42) },
        Case { name: "systemd besteffort", procs: &[("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u_}.slice/cri-containerd-aa.scope", "43\n")], live: &[43], uid: UID, want: Want::Pid(43) },
        Case { name: "crio scope", procs: &[("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u_}.slice/crio-bb.scope", "44\n")], live: &[44], uid: UID, want: Want::Pid(44) },
        Case { name: "docker scope", procs: &[("kubepods.slice/kubepods-pod{u_}.slice/docker-cc.scope", "45\n")], live: &[45], uid: UID, want: Want::Pid(45) },
        Case { name: "cgroupfs guaranteed", procs: &[("kubepods/pod{u}/0123abcd", "51\n")], live: &[51], uid: UID, want: Want::Pid(51) },
        Case { name: "cgroupfs burstable", procs: &[("kubepods/burstable/pod{u}/0123abcd", "52\n")], live: &[52], uid: UID, want: Want::Pid(52) },
        Case { name: "cgroupfs besteffort", procs: &[("kubepods/besteffort/pod{u}/0123abcd", "53\n")], live: &[53], uid: UID, want: Want::Pid(53) },
        Case { name: "two levels below the pod", procs: &[("kubepods/burstable/pod{u}/0123abcd", ""), ("kubepods/burstable/pod{u}/0123abcd/init", "54\n")], live: &[54], uid: UID, want: Want::Pid(54) },
        Case { name: "process only in the pod cgroup", procs: &[("kubepods.slice/kubepods-pod{u_}.slice", "61\n"), ("kubepods.slice/kubepods-pod{u_}.slice/cri-containerd-aa.scope", "")], live: &[61], uid: UID, want: Want::Pid(61) },
        Case { name: "first process gone, garbage skipped", procs: &[("kubepods.slice/kubepods-pod{u_}.slice/cri-containerd-aa.scope", "\n  \nnot-a-pid\n0\n70\n71\n")], live: &[71], uid: UID, want: Want::Pid(71) },
        Case { name: "empty cgroup", procs: &[("kubepods.slice/kubepods-pod{u_}.slice", ""), ("kubepods.slice/kubepods-pod{u_}.slice/cri-containerd-aa.scope", "")], live: &[], uid: UID, want: Want::NoProcess },
        Case { name: "every listed process gone", procs: &[("kubepods/pod{u}/0123abcd", "80\n81\n")], live: &[], uid: UID, want: Want::NoProcess },
        Case { name: "unknown uid", procs: &[("kubepods.slice/kubepods-pod{u_}.slice/cri-containerd-aa.scope", "41\n")], live: &[41], uid: OTHER_UID, want: Want::NoPodCgroup },
        Case { name: "uid walking up", procs: &[("kubepods.slice/kubepods-pod{u_}.slice/cri-containerd-aa.scope", "41\n")], live: &[41], uid: "../kubepods.slice", want: Want::BadUid },
    ];

    #[test]
    fn podns_netns_of_table() {
        for case in CASES {
            let fx = Fixture::new();
            for (rel, pids) in case.procs {
                fx.write_procs(rel, pids);
            }
            for &pid in case.live {
                fx.live(pid);
            }
            let kubepods = fx.cgroup().join(case.procs[0].0.split('/').next().unwrap());
            let finder = PodNetnsFinder::new(kubepods.clone(), fx.proc());
            assert_eq!(finder.kubepods(), kubepods);
            let got = finder.netns_of(case.uid);
            match (&case.want, &got) {
                (Want::Pid(pid), Ok(path)) => assert_eq!(
                    path,
                    &fx.proc().join(pid.to_string()).join("ns/net"),
                    "{}",
                    case.name
                ),
                (Want::NoPodCgroup, Err(PodNetnsError::NoPodCgroup { .. }))
                | (Want::NoProcess, Err(PodNetnsError::NoProcess { .. }))
                | (Want::BadUid, Err(PodNetnsError::BadUid(_))) => {}
                _ => panic!("{}: want {:?}, got {got:?}", case.name, case.want),
            }
        }
    }

    #[test]
    fn podns_rejects_uids_that_are_not_kubernetes_uids() {
        let long = "a".repeat(UID_MAX_LEN + 1);
        for uid in ["", "..", "../etc", "0f3c/../x", "pod 1", "0f3c_8a52", &long] {
            assert!(
                matches!(check_uid(uid), Err(PodNetnsError::BadUid(_))),
                "{uid:?} accepted"
            );
        }
        assert!(check_uid(UID).is_ok());
        assert!(check_uid(&"a".repeat(UID_MAX_LEN)).is_ok());
    }

    #[test]
    fn podns_discover_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("systemd driver", Some("kubepods.slice")),
            ("cgroupfs driver", Some("kubepods")),
            ("neither", None),
        ];
        for &(name, dir) in cases {
            let fx = Fixture::new();
            fs::create_dir_all(fx.cgroup().join("system.slice")).unwrap();
            if let Some(dir) = dir {
                fs::create_dir_all(fx.cgroup().join(dir)).unwrap();
            }
            match (dir, PodNetnsFinder::discover(&fx.cgroup())) {
                (Some(dir), Ok(path)) => assert_eq!(path, fx.cgroup().join(dir), "{name}"),
                (None, Err(e @ PodNetnsError::NoKubepods { .. })) => {
                    let msg = e.to_string();
                    for tried in ["kubepods.slice", "kubepods"] {
                        let tried = fx.cgroup().join(tried);
                        assert!(msg.contains(&*tried.to_string_lossy()), "{name}: {msg}");
                    }
                }
                (_, got) => panic!("{name}: want {dir:?}, got {got:?}"),
            }
        }
    }
}
