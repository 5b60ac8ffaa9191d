//! Parse and validate the mesh file, then build the indexed state from it. Validation runs to
//! completion before anything is applied, so a bad edit never replaces a good state.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::incremental::{self, ItemCache};
use super::meshfile::{CaFile, MeshFile, NodeFile};
use crate::authz::PolicyIndex;
use crate::identity::SpiffeId;
use crate::model::{MeshState, Service, Workload};

/// One problem in the mesh file, with the path of the field that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// e.g. `services[2].ports[0].targetPort`
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read mesh file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mesh file {file}: {path}: {message}")]
    Syntax {
        file: String,
        path: String,
        message: String,
    },
    #[error("mesh file {file} is invalid:{}", list(.errors))]
    Invalid {
        file: String,
        errors: Vec<FieldError>,
    },
    /// A manifests directory with a document that does not parse or an object that is wrong;
    /// each error's path names the file, document, object and field.
    #[error("manifests in {dir} are invalid:{}", list(.errors))]
    Manifests {
        dir: String,
        errors: Vec<FieldError>,
    },
    /// The API server's objects translated into a state that does not validate (a bug in
    /// the translation, or an object it does not yet screen out); the last good state stays.
    #[error("objects from the Kubernetes API server are invalid:{}", list(.errors))]
    Cluster { errors: Vec<FieldError> },
}

fn list(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

/// Everything a weftd needs from one version of the mesh file.
#[derive(Debug)]
pub struct LoadedMesh {
    pub state: MeshState,
    pub nodes: Vec<NodeFile>,
    pub node_defaults: Option<NodeFile>,
    /// CA file paths, made absolute against the mesh file's directory.
    pub ca: Option<CaFile>,
}

impl LoadedMesh {
    /// This node's settings: its `nodes[]` entry, else `nodeDefaults`, else the built-in
    /// defaults.
    pub fn node(&self, name: &str) -> NodeFile {
        if let Some(n) = self.nodes.iter().find(|n| n.name == name) {
            return n.clone();
        }
        match &self.node_defaults {
            Some(d) => NodeFile {
                name: name.to_owned(),
                ..d.clone()
            },
            None => NodeFile::with_defaults(name),
        }
    }
}

pub fn load_file(path: &Path) -> Result<LoadedMesh, ConfigError> {
    let text = read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, &path.display().to_string(), base)
}

pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses and validates `text`; `file` names it in errors and `base` resolves relative CA paths.
pub fn load_str(text: &str, file: &str, base: &Path) -> Result<LoadedMesh, ConfigError> {
    finish(parse_whole(text, file)?, file, base)
}

/// Loads one mesh file again and again: list items whose text did not change since the last
/// load are not parsed again (see [`super::incremental`]).
pub struct MeshLoader {
    path: PathBuf,
    cache: ItemCache,
    /// Workloads, services and policies come from this directory of Kubernetes manifests
    /// instead of the mesh file, which then holds only settings (nodes, CA).
    manifests: Option<PathBuf>,
}

impl MeshLoader {
    pub fn new(path: PathBuf) -> Self {
        MeshLoader {
            path,
            cache: ItemCache::default(),
            manifests: None,
        }
    }

    /// Takes workloads, services and policies from the manifests in `dir` (when given).
    pub fn with_manifests(mut self, dir: Option<PathBuf>) -> Self {
        self.manifests = dir;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifests(&self) -> Option<&Path> {
        self.manifests.as_deref()
    }

    /// The file (and manifests) as they are now: the same result as [`load_file`].
    pub fn load(&mut self) -> Result<LoadedMesh, ConfigError> {
        if let Some(dir) = &self.manifests {
            return super::objects::load_manifests(&self.path, dir);
        }
        let text = read(&self.path)?;
        let file = self.path.display().to_string();
        let mesh = match incremental::parse(&text, &mut self.cache) {
            Some((mesh, reuse)) => {
                tracing::debug!(
                    reused = reuse.reused,
                    parsed = reuse.parsed,
                    "mesh file list items"
                );
                mesh
            }
            None => parse_whole(&text, &file)?,
        };
        finish(mesh, &file, self.path.parent().unwrap_or(Path::new(".")))
    }
}

pub(super) fn finish(mesh: MeshFile, file: &str, base: &Path) -> Result<LoadedMesh, ConfigError> {
    build(mesh, base).map_err(|errors| ConfigError::Invalid {
        file: file.to_string(),
        errors,
    })
}

pub(super) fn parse_whole(text: &str, file: &str) -> Result<MeshFile, ConfigError> {
    // Tracking the path of every value costs a tenth of a large load; only a file that fails
    // needs it, so that one is parsed a second time for the error.
    let parsed = serde::Deserialize::deserialize(serde_yaml_ng::Deserializer::from_str(text));
    parsed.map_err(|plain| syntax_error(text, file, plain))
}

/// The error of a file that does not parse (`plain`), with the path of the value at fault
/// found by parsing it again with paths tracked.
fn syntax_error(text: &str, file: &str, plain: serde_yaml_ng::Error) -> ConfigError {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let (path, mut message) = match serde_path_to_error::deserialize::<_, MeshFile>(de) {
        Err(e) => (e.path().to_string(), e.into_inner().to_string()),
        Ok(_) => (".".to_string(), plain.to_string()),
    };
    // The YAML parser prefixes its own (coarser) path; ours is the precise one.
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
    {
        message = rest.to_string();
    }
    ConfigError::Syntax {
        file: file.to_string(),
        path: if path == "." { "(top)".into() } else { path },
        message,
    }
}

/// The checks every node's settings get, `nodes[i]` or `nodeDefaults`.
fn check_node(at: &str, n: &NodeFile, errs: &mut Errors) {
    for (field, d) in [
        ("idleTimeout", n.hbone.idle_timeout),
        ("keepaliveInterval", n.hbone.keepalive_interval),
        ("keepaliveTimeout", n.hbone.keepalive_timeout),
        ("connectTimeout", n.hbone.connect_timeout),
    ] {
        if d.is_zero() {
            errs.push(format!("{at}.hbone.{field}"), "must be longer than zero");
        }
    }
    if n.capture == super::meshfile::CaptureKind::Ebpf && n.ebpf.is_none() {
        errs.push(
            format!("{at}.ebpf"),
            "capture: ebpf needs an ebpf section (`ebpf: {}` takes every default)",
        );
    }
    if !n.listen.admin.ip().is_loopback() {
        errs.push(
            format!("{at}.listen.admin"),
            "must be a loopback address: the admin API shows the mesh configuration and changes log levels",
        );
    }
}

fn build(mesh: MeshFile, base: &Path) -> Result<LoadedMesh, Vec<FieldError>> {
    let mut errs = Errors::default();
    if let Err(e) = SpiffeId::new(&mesh.trust_domain, "default", "default") {
        errs.push("trustDomain", e.to_string());
    }
    if mesh.hbone_port == 0 {
        errs.push("hbonePort", "must be between 1 and 65535");
    }

    let mut node_names = HashSet::new();
    for (i, n) in mesh.nodes.iter().enumerate() {
        check_node(&format!("nodes[{i}]"), n, &mut errs);
        if n.name.is_empty() {
            errs.push(format!("nodes[{i}].name"), "must not be empty");
        } else if !node_names.insert(n.name.as_str()) {
            errs.push(
                format!("nodes[{i}].name"),
                format!("node {:?} is listed twice", n.name),
            );
        }
    }
    if let Some(n) = &mesh.node_defaults {
        check_node("nodeDefaults", n, &mut errs);
        if !n.name.is_empty() {
            errs.push(
                "nodeDefaults.name",
                "not allowed: the defaults apply to every node `nodes` does not list",
            );
        }
    }

    let workloads = build_workloads(&mesh, &mut errs);
    let services = build_services(&mesh, &workloads, &mut errs);

    for (i, p) in mesh.policies.iter().enumerate() {
        for e in p.validate() {
            errs.push(format!("policies[{i}].{}", e.path), e.message);
        }
    }
    let mut policy_names = HashSet::new();
    for (i, p) in mesh.policies.iter().enumerate() {
        if !policy_names.insert((p.namespace.as_str(), p.name.as_str())) {
            errs.push(
                format!("policies[{i}].name"),
                format!("policy {}/{} is listed twice", p.namespace, p.name),
            );
        }
    }

    let mut route_names = HashSet::new();
    for (i, r) in mesh.routes.iter().enumerate() {
        for e in r.validate() {
            errs.push(format!("routes[{i}].{}", e.path), e.message);
        }
        if !route_names.insert((r.kind, r.namespace.as_str(), r.name.as_str())) {
            errs.push(
                format!("routes[{i}].name"),
                format!(
                    "{} {}/{} is listed twice",
                    r.kind.as_str(),
                    r.namespace,
                    r.name
                ),
            );
        }
    }

    let mut traffic_names = HashSet::new();
    for (i, p) in mesh.traffic_policies.iter().enumerate() {
        for e in p.validate() {
            errs.push(format!("trafficPolicies[{i}].{}", e.path), e.message);
        }
        if !traffic_names.insert((p.namespace.as_str(), p.name.as_str())) {
            errs.push(
                format!("trafficPolicies[{i}].name"),
                format!("TrafficPolicy {} is listed twice", p.key()),
            );
        }
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    let ca = mesh.ca.map(|mut ca| {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut ca.cert_file);
        abs(&mut ca.key_file);
        ca.chain_file.as_mut().map(abs);
        ca.bundle_file.as_mut().map(abs);
        ca
    });
    let policies = PolicyIndex::new(mesh.policies, &mesh.root_namespace);
    Ok(LoadedMesh {
        state: MeshState::new(
            mesh.trust_domain,
            mesh.root_namespace,
            mesh.hbone_port,
            workloads,
            services,
            policies,
        )
        .with_routes(mesh.routes)
        .with_traffic(mesh.traffic_policies),
        nodes: mesh.nodes,
        node_defaults: mesh.node_defaults,
        ca,
    })
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn build_workloads(mesh: &MeshFile, errs: &mut Errors) -> Vec<Arc<Workload>> {
    let mut out = Vec::with_capacity(mesh.workloads.len());
    let mut ip_owner = HashMap::new();
    let mut uids = HashSet::new();
    let mut keys = HashSet::new();
    for (i, w) in mesh.workloads.iter().enumerate() {
        let at = |field: &str| format!("workloads[{i}].{field}");
        if !is_name(&w.name) {
            errs.push(
                at("name"),
                format!("{:?} is not a valid workload name", w.name),
            );
        }
        if w.node.is_empty() {
            errs.push(at("node"), "must not be empty");
        }
        if w.ips.is_empty() {
            errs.push(at("ips"), "a workload needs at least one IP");
        }
        for (j, ip) in w.ips.iter().enumerate() {
            if let Some(other) = ip_owner.insert(*ip, i) {
                errs.push(
                    at(&format!("ips[{j}]")),
                    format!("{ip} already belongs to workloads[{other}]"),
                );
            }
        }
        let uid = w
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", w.namespace, w.name));
        if !uids.insert(uid.clone()) {
            errs.push(at("uid"), format!("uid {uid:?} is used twice"));
        }
        if !keys.insert((w.namespace.clone(), w.name.clone())) {
            errs.push(
                at("name"),
                format!("workload {}/{} is listed twice", w.namespace, w.name),
            );
        }
        let identity = match SpiffeId::new(&mesh.trust_domain, &w.namespace, &w.service_account) {
            Ok(id) => id,
            Err(e) => {
                // Name the field that is wrong, not the identity built from it.
                let field = if SpiffeId::new(&mesh.trust_domain, &w.namespace, "default").is_err() {
                    "namespace"
                } else {
                    "serviceAccount"
                };
                errs.push(at(field), e.to_string());
                continue;
            }
        };
        out.push(Arc::new(Workload {
            uid,
            name: w.name.clone(),
            workload_name: w.workload_name.clone().unwrap_or_else(|| w.name.clone()),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            ips: w.ips.clone(),
            node: w.node.clone(),
            labels: w.labels.clone(),
            mode: w.mode,
            tunnel: w.tunnel,
            inbound: w.inbound,
            waypoint: w.waypoint.clone(),
            netns: w.netns.clone(),
            identity,
        }));
    }
    out
}

fn build_services(mesh: &MeshFile, workloads: &[Arc<Workload>], errs: &mut Errors) -> Vec<Service> {
    let by_key: HashMap<(&str, &str), usize> = workloads
        .iter()
        .enumerate()
        .map(|(i, w)| ((w.namespace.as_str(), w.name.as_str()), i))
        .collect();
    let labels = LabelIndex::new(workloads);
    let ip_owner: HashMap<IpAddr, usize> = workloads
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.ips.iter().map(move |ip| (*ip, i)))
        .collect();
    let mut vip_owner: HashMap<SocketAddr, usize> = HashMap::new();
    let mut keys = HashSet::new();
    let mut out = Vec::with_capacity(mesh.services.len());
    for (i, s) in mesh.services.iter().enumerate() {
        let at = |field: &str| format!("services[{i}].{field}");
        if !is_name(&s.name) {
            errs.push(
                at("name"),
                format!("{:?} is not a valid service name", s.name),
            );
        }
        if !keys.insert((s.namespace.as_str(), s.name.as_str())) {
            errs.push(
                at("name"),
                format!("service {}/{} is listed twice", s.namespace, s.name),
            );
        }
        if s.vips.is_empty() {
            errs.push(at("vips"), "a service needs at least one VIP");
        }
        if s.ports.is_empty() {
            errs.push(at("ports"), "a service needs at least one port");
        }
        let mut seen_ports = HashSet::new();
        for (j, p) in s.ports.iter().enumerate() {
            if p.port == 0 {
                errs.push(
                    at(&format!("ports[{j}].port")),
                    "must be between 1 and 65535",
                );
            } else if !seen_ports.insert(p.port) {
                errs.push(
                    at(&format!("ports[{j}].port")),
                    format!("port {} is listed twice", p.port),
                );
            }
            if p.target_port == Some(0) {
                errs.push(
                    at(&format!("ports[{j}].targetPort")),
                    "must be between 1 and 65535",
                );
            }
            for vip in &s.vips {
                if let Some(other) = vip_owner.insert(SocketAddr::new(*vip, p.port), i)
                    && other != i
                {
                    errs.push(
                        at(&format!("ports[{j}].port")),
                        format!("{vip}:{} already belongs to services[{other}]", p.port),
                    );
                }
            }
        }
        for (j, vip) in s.vips.iter().enumerate() {
            if let Some(w) = ip_owner.get(vip) {
                errs.push(
                    at(&format!("vips[{j}]")),
                    format!("{vip} is an IP of workloads[{w}]"),
                );
            }
        }
        let endpoints = match (&s.selector, &s.endpoints) {
            (Some(_), Some(_)) => {
                errs.push(
                    at("endpoints"),
                    "set either selector or endpoints, not both",
                );
                Vec::new()
            }
            (Some(sel), None) => labels.select(workloads, &s.namespace, sel),
            (None, Some(names)) => {
                let mut eps = Vec::with_capacity(names.len());
                for (j, n) in names.iter().enumerate() {
                    let (ns, name) = n.split_once('/').unwrap_or((s.namespace.as_str(), n));
                    match by_key.get(&(ns, name)) {
                        Some(&w) => eps.push(w),
                        None => errs.push(
                            at(&format!("endpoints[{j}]")),
                            format!("there is no workload {ns}/{name}"),
                        ),
                    }
                }
                eps
            }
            (None, None) => Vec::new(),
        };
        out.push(Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s
                .hostname
                .clone()
                .unwrap_or_else(|| format!("{}.{}.svc.{}", s.name, s.namespace, mesh.trust_domain)),
            vips: s.vips.clone(),
            ports: s.ports.clone(),
            selector: s.selector.clone(),
            waypoint: s.waypoint.clone(),
            endpoint_names: endpoints.iter().map(|&w| workloads[w].key()).collect(),
            endpoints,
        });
    }
    out
}

/// Workloads by namespace and by (namespace, label key, label value). A selector is answered
/// from the posting list of its rarest label rather than by scanning every workload: services
/// times workloads was half of loading a 10 000-workload mesh.
struct LabelIndex<'a> {
    by_namespace: HashMap<&'a str, Vec<usize>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
}

impl<'a> LabelIndex<'a> {
    fn new(workloads: &'a [Arc<Workload>]) -> Self {
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, w) in workloads.iter().enumerate() {
            by_namespace
                .entry(w.namespace.as_str())
                .or_default()
                .push(i);
            for (k, v) in &w.labels {
                by_label
                    .entry((w.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        LabelIndex {
            by_namespace,
            by_label,
        }
    }

    /// The workloads of namespace `ns` whose labels include all of `sel`, in file order.
    fn select(
        &self,
        workloads: &[Arc<Workload>],
        ns: &str,
        sel: &BTreeMap<String, String>,
    ) -> Vec<usize> {
        fn list(l: Option<&Vec<usize>>) -> &[usize] {
            l.map(Vec::as_slice).unwrap_or(&[])
        }
        let candidates: &[usize] = sel
            .iter()
            .map(|(k, v)| list(self.by_label.get(&(ns, k.as_str(), v.as_str()))))
            .min_by_key(|l| l.len())
            .unwrap_or_else(|| list(self.by_namespace.get(ns)));
        candidates
            .iter()
            .copied()
            .filter(|&i| {
                sel.iter()
                    .all(|(k, v)| workloads[i].labels.get(k) == Some(v))
            })
            .collect()
    }
}

/// Kubernetes object names: DNS-1123 subdomains.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}
