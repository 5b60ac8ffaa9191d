//! Running eBPF capture: attach the outbound programs to the pods' cgroup, enrol and unenrol
//! workloads by updating maps (never by reloading programs), and read original destinations.
//!
//! weftd reads original destinations from the `orig_by_addr` map directly. The getsockopt
//! (`SO_ORIGINAL_DST`) program is loaded but not attached: it only runs for processes in the
//! cgroup it is attached to, and two weftd sharing a cgroup (tests) cannot both attach there.
//!
//! Not built yet: inbound steering (TCX classifier, ip rule, sk_lookup), pinning and takeover.
//! Until pinning, links live as long as weftd: if it dies, capture stops (fails open).

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::HashMap as BpfHashMap;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use weft_core::config::EbpfFile;
use weft_core::model::{CaptureMode, MeshState};

use super::bpf::{self, LoadError, ProgramSettings, SOCK_ADDR, SOCK_OPS};

const ENROLLED: u32 = 1;

/// `struct pod` in capture.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct PodEntry {
    flags: u32,
    ip4: u32,
    redirect_ip4: u32,
    pad: u32,
}

// SAFETY: plain old data, `repr(C)`, no padding beyond the explicit field.
unsafe impl aya::Pod for PodEntry {}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("no cgroup2 mount found; set nodes[].ebpf.cgroup")]
    NoCgroup,
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("attaching {name}: {source}")]
    Attach {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("reading the network namespace of {netns}: {source}")]
    Netns {
        netns: PathBuf,
        source: std::io::Error,
    },
    #[error("workload {0} has no netns path or no IPv4 address; it cannot be captured")]
    NotCapturable(String),
    #[error(transparent)]
    Routing(super::netlink::NetlinkError),
    #[error("no /32 route to {0}: cannot find its host-side interface")]
    NoInterface(Ipv4Addr),
}

/// What capture is doing, for `/config_dump`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureStatus {
    pub mode: &'static str,
    pub cgroup: String,
    pub redirect_address: String,
    pub attached: Vec<&'static str>,
    pub loaded_not_attached: Vec<&'static str>,
    pub enrolled: Vec<String>,
}

struct Enrolled {
    cookie: u64,
    ip: Ipv4Addr,
}

/// `struct addr_key` and `struct orig_dst` in capture.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct AddrKey {
    ip4: u32,
    port: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct OrigDst {
    ip4: u32,
    port: u16,
    pad: u16,
}

// SAFETY: plain old data, `repr(C)`, explicit padding.
unsafe impl aya::Pod for AddrKey {}
// SAFETY: as above.
unsafe impl aya::Pod for OrigDst {}

/// The original destinations of redirected connections, keyed by the pod's address (the peer
/// weftd sees on accept). Lookups take no lock: the kernel map is the synchronisation.
pub struct OriginalDestinations {
    map: BpfHashMap<aya::maps::MapData, AddrKey, OrigDst>,
}

impl OriginalDestinations {
    pub fn lookup(&self, peer: SocketAddr) -> std::io::Result<SocketAddr> {
        let IpAddr::V4(ip) = peer.ip() else {
            return Err(std::io::Error::other("IPv6 is not captured"));
        };
        let key = AddrKey {
            ip4: u32::from_ne_bytes(ip.octets()),
            port: peer.port(),
            pad: 0,
        };
        let o = self.map.get(&key, 0).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no original destination for {peer}: {e}"),
            )
        })?;
        let ip = Ipv4Addr::from(o.ip4.to_ne_bytes());
        Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(o.port)))
    }
}

/// The loaded and attached capture programs, and who is enrolled.
pub struct Capture {
    ebpf: Ebpf,
    redirect: Ipv4Addr,
    enrolled: HashMap<String, Enrolled>,
    destinations: std::sync::Arc<OriginalDestinations>,
    enrolled_count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stats: Option<super::stats::CaptureStats>,
    cgroup: PathBuf,
    /// Host-side interfaces the classifier is attached to.
    classified: std::collections::HashSet<String>,
    inbound: bool,
    uplinks: Vec<String>,
}

impl Capture {
    pub fn start(cfg: &EbpfFile, settings: &ProgramSettings) -> Result<Self, CaptureError> {
        let mut ebpf = bpf::load(settings)?;
        let path = cfg
            .cgroup
            .clone()
            .or_else(super::check::find_cgroup2)
            .ok_or(CaptureError::NoCgroup)?;
        let cgroup = File::open(&path).map_err(|source| CaptureError::Cgroup {
            path: path.clone(),
            source,
        })?;
        let attach_err = |name| move |source| CaptureError::Attach { name, source };
        for &name in SOCK_ADDR {
            program::<CgroupSockAddr>(&mut ebpf, name)?
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(attach_err(name))?;
        }
        program::<SockOps>(&mut ebpf, SOCK_OPS)?
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(attach_err(SOCK_OPS))?;
        let map = ebpf
            .take_map("orig_by_addr")
            .ok_or_else(|| no_map("orig_by_addr"))?;
        let map = BpfHashMap::try_from(map).map_err(map_error("orig_by_addr"))?;
        let stats = ebpf.take_map("stats").ok_or_else(|| no_map("stats"))?;
        let counters = aya::maps::PerCpuArray::try_from(stats).map_err(map_error("stats"))?;
        let enrolled_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tracing::info!(cgroup = %path.display(), redirect = %cfg.redirect_address, "eBPF outbound capture attached");
        let path = path.clone();
        Ok(Capture {
            ebpf,
            redirect: cfg.redirect_address,
            enrolled: HashMap::new(),
            destinations: std::sync::Arc::new(OriginalDestinations { map }),
            stats: Some(super::stats::CaptureStats {
                counters,
                enrolled: enrolled_count.clone(),
            }),
            enrolled_count,
            cgroup: path,
            classified: Default::default(),
            inbound: false,
            uplinks: cfg.interfaces.clone(),
        })
    }

    /// Inbound steering: sk_lookup on weftd's network namespace handing new connections to
    /// enrolled pods to `hbone` and `plaintext` (transparent listeners), and the rule and local
    /// table that make marked packets local. The classifier is attached per pod interface in
    /// `reconcile`.
    pub async fn start_inbound(
        &mut self,
        hbone: &tokio::net::TcpListener,
        plaintext: &tokio::net::TcpListener,
        routing: &super::netlink::Routing,
    ) -> Result<(), CaptureError> {
        let map = self
            .ebpf
            .map_mut("listeners")
            .ok_or_else(|| no_map("listeners"))?;
        let mut sockmap = aya::maps::SockMap::try_from(map).map_err(map_error("listeners"))?;
        sockmap
            .set(0, plaintext, 0)
            .map_err(map_error("listeners"))?;
        sockmap.set(1, hbone, 0).map_err(map_error("listeners"))?;
        let netns = File::open("/proc/self/ns/net").map_err(|source| CaptureError::Netns {
            netns: "/proc/self/ns/net".into(),
            source,
        })?;
        program::<aya::programs::SkLookup>(&mut self.ebpf, bpf::SK_LOOKUP)?
            .attach(netns)
            .map_err(|source| CaptureError::Attach {
                name: bpf::SK_LOOKUP,
                source,
            })?;
        routing.install().await.map_err(CaptureError::Routing)?;
        for iface in self.uplinks.clone() {
            self.attach_classifier(&iface)?;
        }
        self.inbound = true;
        tracing::info!("eBPF inbound capture attached");
        Ok(())
    }

    /// Attaches the classifier to the host-side interface of `ip` (once per interface).
    fn classify(&mut self, ip: Ipv4Addr) -> Result<(), CaptureError> {
        let Some(iface) = host_interface(ip) else {
            return Err(CaptureError::NoInterface(ip));
        };
        self.attach_classifier(&iface)
    }

    fn attach_classifier(&mut self, iface: &str) -> Result<(), CaptureError> {
        if self.classified.contains(iface) {
            return Ok(());
        }
        program::<aya::programs::SchedClassifier>(&mut self.ebpf, bpf::CLASSIFIER)?
            .attach(iface, aya::programs::TcAttachType::Ingress)
            .map_err(|source| CaptureError::Attach {
                name: bpf::CLASSIFIER,
                source,
            })?;
        tracing::info!(interface = %iface, "classifier attached");
        self.classified.insert(iface.to_string());
        Ok(())
    }

    /// The metrics collector, once (the registry owns it from then on).
    pub fn take_stats(&mut self) -> Option<super::stats::CaptureStats> {
        self.stats.take()
    }

    /// For `/config_dump`.
    pub fn status(&self) -> CaptureStatus {
        let mut enrolled: Vec<String> = self.enrolled.keys().cloned().collect();
        enrolled.sort();
        CaptureStatus {
            mode: "ebpf",
            cgroup: self.cgroup.display().to_string(),
            redirect_address: self.redirect.to_string(),
            attached: bpf::SOCK_ADDR
                .iter()
                .copied()
                .chain([bpf::SOCK_OPS])
                .collect(),
            loaded_not_attached: vec![bpf::SOCKOPT, bpf::CLASSIFIER, bpf::SK_LOOKUP],
            enrolled,
        }
    }

    pub fn destinations(&self) -> std::sync::Arc<OriginalDestinations> {
        self.destinations.clone()
    }

    /// Enrols the local ambient workloads of `state` and unenrols the others. A workload that
    /// cannot be enrolled is logged and skipped; the rest still are.
    pub fn reconcile(&mut self, state: &MeshState, node: &str) {
        let wanted: Vec<_> = state
            .local_workloads(node)
            .filter(|w| w.mode == CaptureMode::Ambient)
            .cloned()
            .collect();
        let keep: std::collections::HashSet<&str> = wanted.iter().map(|w| w.uid.as_str()).collect();
        let gone: Vec<String> = self
            .enrolled
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for uid in gone {
            if let Err(e) = self.unenrol(&uid) {
                tracing::warn!(workload = %uid, "unenrolling: {e}");
            }
        }
        if self.inbound {
            // Every local pod's interface carries traffic towards enrolled pods, enrolled
            // or not itself.
            let ips: Vec<Ipv4Addr> = state
                .local_workloads(node)
                .flat_map(|w| w.ips.iter().filter_map(ipv4))
                .collect();
            for ip in ips {
                if let Err(e) = self.classify(ip) {
                    tracing::error!(%ip, "inbound capture for this pod's interface: {e}");
                }
            }
        }
        for w in wanted {
            if self.enrolled.contains_key(&w.uid) {
                continue;
            }
            let ip = w.ips.iter().find_map(ipv4);
            let result = match (&w.netns, ip) {
                (Some(netns), Some(ip)) => self.enrol(&w.uid, netns, ip),
                _ => Err(CaptureError::NotCapturable(w.key())),
            };
            match result {
                Ok(()) => tracing::info!(workload = %w.key(), "enrolled for capture"),
                Err(e) => tracing::error!(workload = %w.key(), "not captured: {e}"),
            }
        }
    }

    fn enrol(&mut self, uid: &str, netns: &Path, ip: Ipv4Addr) -> Result<(), CaptureError> {
        let cookie = netns_cookie(netns).map_err(|source| CaptureError::Netns {
            netns: netns.to_path_buf(),
            source,
        })?;
        let entry = PodEntry {
            flags: ENROLLED,
            ip4: u32::from_ne_bytes(ip.octets()),
            redirect_ip4: u32::from_ne_bytes(self.redirect.octets()),
            pad: 0,
        };
        self.pods()?
            .insert(cookie, entry, 0)
            .map_err(map_error("pods_by_netns"))?;
        // Both entries or neither: a pod redirected outbound but not steered inbound would be
        // half in the mesh.
        let steered = self.pod_ips().and_then(|mut m| {
            m.insert(entry.ip4, ENROLLED, 0)
                .map_err(map_error("pod_ips"))
        });
        if let Err(e) = steered {
            let _ = self.pods()?.remove(&cookie);
            return Err(e);
        }
        self.enrolled
            .insert(uid.to_string(), Enrolled { cookie, ip });
        self.enrolled_count
            .store(self.enrolled.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn unenrol(&mut self, uid: &str) -> Result<(), CaptureError> {
        let Some(e) = self.enrolled.remove(uid) else {
            return Ok(());
        };
        self.enrolled_count
            .store(self.enrolled.len(), std::sync::atomic::Ordering::Relaxed);
        // New connections go direct from now on; ones already redirected keep their map
        // entries (keyed by socket) and finish through weftd.
        let _ = self.pods()?.remove(&e.cookie);
        let _ = self.pod_ips()?.remove(&u32::from_ne_bytes(e.ip.octets()));
        tracing::info!(workload = %uid, "unenrolled from capture");
        Ok(())
    }

    fn pods(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, u64, PodEntry>, CaptureError> {
        let map = self
            .ebpf
            .map_mut("pods_by_netns")
            .ok_or_else(|| no_map("pods_by_netns"))?;
        BpfHashMap::try_from(map).map_err(map_error("pods_by_netns"))
    }

    fn pod_ips(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, u32>, CaptureError> {
        let map = self
            .ebpf
            .map_mut("pod_ips")
            .ok_or_else(|| no_map("pod_ips"))?;
        BpfHashMap::try_from(map).map_err(map_error("pod_ips"))
    }
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map { name, source }
}

/// The object lacks a map the code expects: a stale or foreign object.
fn no_map(name: &'static str) -> CaptureError {
    CaptureError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(CaptureError::Load(LoadError::Missing(name)))?;
    p.try_into()
        .map_err(|source| CaptureError::Attach { name, source })
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The kernel's cookie for the network namespace at `path`: what `bpf_get_netns_cookie` returns
/// for the pod's sockets. Read from a short-lived thread that enters the namespace, so weftd's
/// own threads never leave theirs.
pub fn netns_cookie(path: &Path) -> std::io::Result<u64> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: plain socket(2); the fd is owned at once.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh, valid descriptor.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: cookie/len point to valid memory of the stated size.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(cookie)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns cookie thread panicked")))
    })
}

/// The interface the main table routes `ip`/32 through (a ptp CNI's host-side veth), from
/// /proc/net/route: the same table netlink reads, without a round trip per pod.
fn host_interface(ip: Ipv4Addr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let want = format!("{:08X}", u32::from_ne_bytes(ip.octets()));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && f[1] == want && f[7] == "FFFFFFFF").then(|| f[0].to_string())
    })
}

fn ipv4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    }
}
