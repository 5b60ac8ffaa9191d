//! Running eBPF capture: attach the programs (outbound to the pods' cgroup, sk_lookup to the
//! node namespace, the classifier to pod interfaces and uplinks), pin every link and map so
//! capture outlives weftd, enrol and unenrol workloads by updating maps (never by reloading
//! programs), and read original destinations.
//!
//! weftd reads original destinations from the `orig_by_addr` map directly. The getsockopt
//! (`SO_ORIGINAL_DST`) program is loaded but not attached: it only runs for processes in the
//! cgroup it is attached to, and two weftd sharing a cgroup (tests) cannot both attach there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::Ebpf;
use aya::maps::HashMap as BpfHashMap;
use aya::programs::links::{FdLink, LinkError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, SkLookup, SockOps};
use weft_core::config::EbpfFile;
use weft_core::model::{CaptureMode, MeshState};

use super::bpf::{self, LoadError, ProgramSettings, SOCK_ADDR, SOCK_OPS};
use super::pin::{PinDir, PinError};

/// `pod_ips` / `pods_by_netns` flags (capture.c).
const ENROLLED: u32 = 1;
const DRAINING: u32 = 2;

/// Attach state per (program, target), shared with the metrics collector. `None`: attached;
/// `Some(error)`: the attach failed.
pub type Attachments = Arc<Mutex<BTreeMap<(&'static str, String), Option<String>>>>;

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
    #[error("workload {0} has no IPv4 address; it cannot be captured")]
    NotCapturable(String),
    #[error(transparent)]
    PodNetns(#[from] super::podns::PodNetnsError),
    #[error(transparent)]
    Routing(super::netlink::NetlinkError),
    #[error("no /32 route to {0}: cannot find its host-side interface")]
    NoInterface(Ipv4Addr),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        source: LinkError,
    },
}

/// What capture is doing, for `/config_dump`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureStatus {
    pub mode: &'static str,
    pub cgroup: String,
    /// Where the cgroups of pods without a netns path (Kubernetes pods) are looked up.
    pub kubepods: String,
    pub pin_path: String,
    pub redirect_address: String,
    /// What this weftd found pinned when it started, from a previous one.
    pub took_over: TakeOver,
    pub attachments: Vec<AttachmentStatus>,
    pub loaded_not_attached: Vec<&'static str>,
    pub enrolled: Vec<String>,
    /// Unenrolled workloads whose flows through weftd are still steered to it.
    pub draining: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TakeOver {
    pub links: usize,
    pub maps: bool,
    pub enrolled_pods: usize,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentStatus {
    pub program: &'static str,
    /// `cgroup:<path>`, `netns`, or the interface name.
    pub target: String,
    pub attached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    pins: PinDir,
    redirect: Ipv4Addr,
    enrolled: HashMap<String, Enrolled>,
    /// Unenrolled workloads still present, whose pod IP stays in `pod_ips` as DRAINING.
    draining: HashMap<String, Ipv4Addr>,
    destinations: Arc<OriginalDestinations>,
    enrolled_count: Arc<std::sync::atomic::AtomicUsize>,
    stats: Option<super::stats::CaptureStats>,
    cgroup: PathBuf,
    /// Finds the network namespace of pods that name none (Kubernetes pods, by UID).
    pods_netns: super::podns::PodNetnsFinder,
    /// Interfaces the classifier is attached to, with their index: a pod interface that was
    /// deleted and created again under the same name has a new index and needs a new link.
    classified: HashMap<String, u32>,
    attachments: Attachments,
    inbound: bool,
    uplinks: Vec<String>,
    took_over: TakeOver,
    /// Set after the first reconcile has removed what the previous weftd left and this one
    /// does not want.
    settled: bool,
}

impl Capture {
    /// Loads the programs (reusing maps a previous weftd pinned) and attaches the outbound
    /// ones to the pods' cgroup, replacing the previous weftd's links without a gap.
    pub fn start(cfg: &EbpfFile, settings: &ProgramSettings) -> Result<Self, CaptureError> {
        let mut pins = PinDir::open(&cfg.pin_path)?;
        pins.check_maps(bpf::OBJECT)?;
        let took_over = TakeOver {
            links: pins.links().len(),
            maps: pins.has_maps(),
            enrolled_pods: 0,
        };
        let mut ebpf = bpf::load(settings, &pins.maps())?;
        let path = cfg
            .cgroup
            .clone()
            .or_else(super::check::find_cgroup2)
            .ok_or(CaptureError::NoCgroup)?;
        let cgroup = File::open(&path).map_err(|source| CaptureError::Cgroup {
            path: path.clone(),
            source,
        })?;
        let target = format!("cgroup:{}", path.display());
        let attachments: Attachments = Default::default();
        for &name in SOCK_ADDR {
            let p = program::<CgroupSockAddr>(&mut ebpf, name)?;
            let id = p
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(attach_err(name))?;
            let link = p.take_link(id).map_err(attach_err(name))?;
            let link = FdLink::try_from(link).map_err(link_err(name))?;
            pins.replace_link(&PinDir::link_name("cgroup", name), link)?;
            record(&attachments, name, &target, None);
        }
        let p = program::<SockOps>(&mut ebpf, SOCK_OPS)?;
        let id = p
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(attach_err(SOCK_OPS))?;
        let link = p.take_link(id).map_err(attach_err(SOCK_OPS))?;
        let link = FdLink::try_from(link).map_err(link_err(SOCK_OPS))?;
        pins.replace_link(&PinDir::link_name("cgroup", SOCK_OPS), link)?;
        record(&attachments, SOCK_OPS, &target, None);

        let map = ebpf
            .take_map("orig_by_addr")
            .ok_or_else(|| no_map("orig_by_addr"))?;
        let map = BpfHashMap::try_from(map).map_err(map_error("orig_by_addr"))?;
        let stats = ebpf.take_map("stats").ok_or_else(|| no_map("stats"))?;
        let counters = aya::maps::PerCpuArray::try_from(stats).map_err(map_error("stats"))?;
        let enrolled_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut c = Capture {
            ebpf,
            pins,
            redirect: cfg.redirect_address,
            enrolled: HashMap::new(),
            draining: HashMap::new(),
            destinations: Arc::new(OriginalDestinations { map }),
            stats: Some(super::stats::CaptureStats {
                counters,
                enrolled: enrolled_count.clone(),
                attachments: attachments.clone(),
            }),
            enrolled_count,
            // The cgroup capture attaches to is the kubepods root (or a cgroup2 mount that
            // holds it); pods' cgroups are below it either way.
            pods_netns: super::podns::PodNetnsFinder::new(
                super::podns::PodNetnsFinder::discover(&path).unwrap_or_else(|_| path.clone()),
                PathBuf::from("/proc"),
            ),
            cgroup: path.clone(),
            classified: HashMap::new(),
            attachments,
            inbound: false,
            uplinks: cfg.interfaces.clone(),
            took_over,
            settled: false,
        };
        c.took_over.enrolled_pods = c.pods()?.keys().count();
        if c.took_over.maps {
            tracing::info!(
                pins = %c.pins.root().display(),
                links = c.took_over.links,
                enrolled_pods = c.took_over.enrolled_pods,
                "taking over the capture state a previous weftd pinned"
            );
        }
        tracing::info!(cgroup = %path.display(), redirect = %cfg.redirect_address, pins = %c.pins.root().display(), "eBPF outbound capture attached");
        Ok(c)
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
        let p = program::<SkLookup>(&mut self.ebpf, bpf::SK_LOOKUP)?;
        let id = p.attach(netns).map_err(attach_err(bpf::SK_LOOKUP))?;
        let link = p.take_link(id).map_err(attach_err(bpf::SK_LOOKUP))?;
        self.pins.replace_link(
            &PinDir::link_name("netns", bpf::SK_LOOKUP),
            FdLink::from(link),
        )?;
        record(&self.attachments, bpf::SK_LOOKUP, "netns", None);
        routing.install().await.map_err(CaptureError::Routing)?;
        for iface in self.uplinks.clone() {
            self.attach_classifier(&iface);
        }
        self.inbound = true;
        tracing::info!("eBPF inbound capture attached");
        Ok(())
    }

    /// Attaches the classifier to `iface` unless it is attached there already (to the same
    /// interface, not only the same name). A failure is recorded in the attach status and
    /// logged; the other interfaces are unaffected.
    fn attach_classifier(&mut self, iface: &str) {
        let index = interface_index(iface);
        if index.is_some() && self.classified.get(iface) == index.as_ref() {
            return;
        }
        let result = index
            .ok_or_else(|| format!("no interface {iface}"))
            .and_then(|index| {
                self.attach_classifier_link(iface)
                    .map(|()| index)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(index) => {
                tracing::info!(interface = %iface, "classifier attached");
                self.classified.insert(iface.to_string(), index);
                record(&self.attachments, bpf::CLASSIFIER, iface, None);
            }
            Err(e) => {
                tracing::error!(interface = %iface, "attaching the inbound classifier: {e}");
                self.classified.remove(iface);
                record(&self.attachments, bpf::CLASSIFIER, iface, Some(e));
            }
        }
    }

    fn attach_classifier_link(&mut self, iface: &str) -> Result<(), CaptureError> {
        let p = program::<SchedClassifier>(&mut self.ebpf, bpf::CLASSIFIER)?;
        let id = p
            .attach(iface, aya::programs::TcAttachType::Ingress)
            .map_err(attach_err(bpf::CLASSIFIER))?;
        let link = p.take_link(id).map_err(attach_err(bpf::CLASSIFIER))?;
        let link = FdLink::try_from(link).map_err(link_err(bpf::CLASSIFIER))?;
        self.pins
            .replace_link(&PinDir::link_name("tcx", iface), link)?;
        Ok(())
    }

    /// Unpins (so detaches) the classifier of an interface no local pod uses any more.
    fn detach_classifier(&mut self, iface: &str) {
        self.classified.remove(iface);
        if let Ok(mut a) = self.attachments.lock() {
            a.remove(&(bpf::CLASSIFIER, iface.to_string()));
        }
        match self.pins.remove_link(&PinDir::link_name("tcx", iface)) {
            Ok(()) => tracing::info!(interface = %iface, "classifier detached"),
            Err(e) => tracing::warn!(interface = %iface, "detaching the classifier: {e}"),
        }
    }

    /// The metrics collector, once (the registry owns it from then on).
    pub fn take_stats(&mut self) -> Option<super::stats::CaptureStats> {
        self.stats.take()
    }

    /// For `/config_dump`.
    pub fn status(&self) -> CaptureStatus {
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let attachments = self
            .attachments
            .lock()
            .map(|a| {
                a.iter()
                    .map(|((program, target), error)| AttachmentStatus {
                        program,
                        target: target.clone(),
                        attached: error.is_none(),
                        error: error.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        CaptureStatus {
            mode: "ebpf",
            cgroup: self.cgroup.display().to_string(),
            kubepods: self.pods_netns.kubepods().display().to_string(),
            pin_path: self.pins.root().display().to_string(),
            redirect_address: self.redirect.to_string(),
            took_over: self.took_over.clone(),
            attachments,
            loaded_not_attached: vec![bpf::SOCKOPT],
            enrolled: sorted(self.enrolled.keys().cloned().collect()),
            draining: sorted(self.draining.keys().cloned().collect()),
        }
    }

    pub fn destinations(&self) -> std::sync::Arc<OriginalDestinations> {
        self.destinations.clone()
    }

    /// Enrols the local ambient workloads of `state` and unenrols the others, and keeps the
    /// classifier on exactly the interfaces of local pods and the uplinks. A workload that
    /// cannot be enrolled is logged and skipped; the rest still are.
    pub fn reconcile(&mut self, state: &MeshState, node: &str) {
        let local: Vec<_> = state.local_workloads(node).cloned().collect();
        let present: HashSet<&str> = local.iter().map(|w| w.uid.as_str()).collect();
        let wanted: HashSet<&str> = local
            .iter()
            .filter(|w| w.mode == CaptureMode::Ambient)
            .map(|w| w.uid.as_str())
            .collect();
        let gone: Vec<String> = self
            .enrolled
            .keys()
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        for uid in gone {
            if let Err(e) = self.unenrol(&uid, present.contains(uid.as_str())) {
                tracing::warn!(workload = %uid, "unenrolling: {e}");
            }
        }
        // A draining workload that left the mesh has no flows worth keeping.
        let finished: Vec<String> = self
            .draining
            .keys()
            .filter(|k| !present.contains(k.as_str()))
            .cloned()
            .collect();
        for uid in finished {
            if let Some(ip) = self.draining.remove(&uid) {
                let _ = self.pod_ips().and_then(|mut m| {
                    m.remove(&u32::from_ne_bytes(ip.octets()))
                        .map_err(map_error("pod_ips"))
                });
            }
        }
        if self.inbound {
            // Every local pod's interface carries traffic towards enrolled pods, enrolled
            // or not itself.
            let mut interfaces: HashSet<String> = self.uplinks.iter().cloned().collect();
            let routes = HostRoutes::read();
            for ip in local.iter().flat_map(|w| w.ips.iter().filter_map(ipv4)) {
                match routes.interface(ip) {
                    Some(iface) => {
                        interfaces.insert(iface);
                    }
                    None => tracing::error!(
                        %ip,
                        "inbound capture for this pod's interface: {}",
                        CaptureError::NoInterface(ip)
                    ),
                }
            }
            let unused: Vec<String> = self
                .classified
                .keys()
                .filter(|i| !interfaces.contains(*i))
                .cloned()
                .collect();
            for iface in unused {
                self.detach_classifier(&iface);
            }
            let mut interfaces: Vec<String> = interfaces.into_iter().collect();
            interfaces.sort();
            for iface in interfaces {
                self.attach_classifier(&iface);
            }
        }
        for w in local.iter().filter(|w| wanted.contains(w.uid.as_str())) {
            if self.enrolled.contains_key(&w.uid) {
                continue;
            }
            let ip = w.ips.iter().find_map(ipv4);
            let result = match (&w.netns, ip) {
                (Some(netns), Some(ip)) => self.enrol(&w.uid, netns, ip),
                // A pod on a real node: its namespace is found through its cgroup.
                (None, Some(ip)) => self
                    .pods_netns
                    .netns_of(&w.uid)
                    .map_err(CaptureError::from)
                    .and_then(|netns| self.enrol(&w.uid, &netns, ip)),
                (_, None) => Err(CaptureError::NotCapturable(w.key())),
            };
            match result {
                Ok(()) => tracing::info!(workload = %w.key(), "enrolled for capture"),
                Err(e) => tracing::error!(workload = %w.key(), "not captured: {e}"),
            }
        }
        if !self.settled {
            self.settled = true;
            self.remove_leftovers();
        }
    }

    /// After taking over: map entries of pods this weftd did not enrol (they left the mesh
    /// while no weftd ran) and links it did not replace are removed.
    fn remove_leftovers(&mut self) {
        let cookies: HashSet<u64> = self.enrolled.values().map(|e| e.cookie).collect();
        let ips: HashSet<u32> = self
            .enrolled
            .values()
            .map(|e| e.ip)
            .chain(self.draining.values().copied())
            .map(|ip| u32::from_ne_bytes(ip.octets()))
            .collect();
        let mut removed = 0;
        if let Ok(mut pods) = self.pods() {
            let stale: Vec<u64> = pods
                .keys()
                .flatten()
                .filter(|k| !cookies.contains(k))
                .collect();
            for k in stale {
                removed += usize::from(pods.remove(&k).is_ok());
            }
        }
        if let Ok(mut pod_ips) = self.pod_ips() {
            let stale: Vec<u32> = pod_ips
                .keys()
                .flatten()
                .filter(|k| !ips.contains(k))
                .collect();
            for k in stale {
                removed += usize::from(pod_ips.remove(&k).is_ok());
            }
        }
        let links = self.pins.remove_leftovers();
        if removed > 0 || !links.is_empty() {
            tracing::info!(
                map_entries = removed,
                links = ?links,
                "removed capture state the previous weftd left and this one does not use"
            );
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
        self.draining.remove(uid);
        self.enrolled
            .insert(uid.to_string(), Enrolled { cookie, ip });
        self.enrolled_count
            .store(self.enrolled.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// New connections of the pod go direct from now on; ones already redirected keep their
    /// map entries (keyed by socket) and finish through weftd. While the workload is still
    /// `present`, its IP stays DRAINING so inbound flows weftd owns keep reaching weftd.
    fn unenrol(&mut self, uid: &str, present: bool) -> Result<(), CaptureError> {
        let Some(e) = self.enrolled.remove(uid) else {
            return Ok(());
        };
        self.enrolled_count
            .store(self.enrolled.len(), std::sync::atomic::Ordering::Relaxed);
        let _ = self.pods()?.remove(&e.cookie);
        let key = u32::from_ne_bytes(e.ip.octets());
        if present {
            self.pod_ips()?
                .insert(key, DRAINING, 0)
                .map_err(map_error("pod_ips"))?;
            self.draining.insert(uid.to_string(), e.ip);
        } else {
            let _ = self.pod_ips()?.remove(&key);
        }
        tracing::info!(workload = %uid, draining = present, "unenrolled from capture");
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

fn attach_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> CaptureError {
    move |source| CaptureError::Attach { name, source }
}

fn link_err(name: &'static str) -> impl FnOnce(LinkError) -> CaptureError {
    move |source| CaptureError::Link { name, source }
}

fn record(attachments: &Attachments, program: &'static str, target: &str, error: Option<String>) {
    if let Ok(mut a) = attachments.lock() {
        a.insert((program, target.to_string()), error);
    }
}

fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid C string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
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

/// The main table's /32 routes (a ptp CNI's route to each pod through its host-side veth),
/// from /proc/net/route: the same table netlink reads, read once per reconcile rather than
/// once per pod.
struct HostRoutes(HashMap<Ipv4Addr, String>);

impl HostRoutes {
    fn read() -> Self {
        let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        let routes = table.lines().skip(1).filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() <= 7 || f[7] != "FFFFFFFF" {
                return None;
            }
            // The file prints the address in host byte order.
            let ip = u32::from_str_radix(f[1], 16).ok()?;
            Some((Ipv4Addr::from(ip.to_ne_bytes()), f[0].to_string()))
        });
        // The first route wins, as it does in the kernel's listing order.
        let mut first = HashMap::new();
        for (ip, iface) in routes {
            first.entry(ip).or_insert(iface);
        }
        HostRoutes(first)
    }

    /// The interface the main table routes `ip`/32 through.
    fn interface(&self, ip: Ipv4Addr) -> Option<String> {
        self.0.get(&ip).cloned()
    }
}

fn ipv4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    }
}
