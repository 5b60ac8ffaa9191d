//! `weftd capture check`: can this machine capture? Loads every program through the kernel
//! verifier and looks at the file systems capture needs, naming whatever is missing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::bpf::{self, ProgramSettings};
use super::pin;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
pub(super) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub(super) fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid C string and `st` is large enough for statfs to fill.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let f_type = unsafe { st.assume_init() }.f_type;
    // f_type is i64 on x86_64 but narrower on other architectures.
    #[allow(clippy::unnecessary_cast)]
    Some(f_type as i64)
}

/// The cgroup2 mount: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn find_cgroup2() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| fs_magic(p) == Some(CGROUP2_SUPER_MAGIC))
}

/// Prints one line per check; returns whether capture can run.
pub fn run(cgroup: &Path, bpffs: &Path) -> bool {
    let mut ok = true;
    let mut report = |good: bool, what: String| {
        println!("{} {what}", if good { "ok  " } else { "FAIL" });
        ok &= good;
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    if !is_root() {
        report(false, "weftd must run as root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to load capture programs".into());
        return false;
    }
    match fs_magic(cgroup) {
        Some(CGROUP2_SUPER_MAGIC) => report(true, format!("cgroup2 at {}", cgroup.display())),
        Some(_) => report(
            false,
            format!(
                "{} is not a cgroup2 mount (pass --cgroup with the cgroup2 path, e.g. /sys/fs/cgroup/unified)",
                cgroup.display()
            ),
        ),
        None => report(
            false,
            format!(
                "{} does not exist (pass --cgroup with the cgroup2 mount)",
                cgroup.display()
            ),
        ),
    }
    if fs_magic(bpffs) != Some(BPF_FS_MAGIC) {
        report(
            false,
            format!(
                "{} is not a bpf file system: mount one with `mount -t bpf bpf {}`",
                bpffs.display(),
                bpffs.display()
            ),
        );
        println!("skipped: loading the programs (their maps are pinned on bpffs)");
        return false;
    }
    report(true, format!("bpffs at {}", bpffs.display()));
    // The maps are pinned by name: load them into a private directory and remove it after.
    let scratch = bpffs.join(format!("weft-check-{}", std::process::id()));
    let loaded = pin::PinDir::open(&scratch)
        .map_err(|e| e.to_string())
        .and_then(|dir| {
            bpf::load(&ProgramSettings::default(), &dir.maps()).map_err(|e| e.to_string())
        });
    match loaded {
        Ok(_) => {
            for name in bpf::program_names() {
                report(true, format!("program {name} accepted by the verifier"));
            }
        }
        Err(e) => report(false, e),
    }
    if let Err(e) = pin::uninstall(&scratch) {
        println!("warning: removing {}: {e}", scratch.display());
    }
    ok
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
