//! The indexed mesh state: one immutable snapshot per configuration version, shared by every
//! connection. Lookups on the per-connection path are hash lookups; nothing here allocates.

use foldhash::{HashMap, HashMapExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::watch;

use super::route::Route;
use super::service::{Service, ServicePort};
use super::traffic::TrafficPolicy;
use super::workload::Workload;
use crate::authz::PolicyIndex;

/// One consistent view of the mesh. Rebuilt whole on every reload, so readers never see half of
/// an update.
#[derive(Debug)]
pub struct MeshState {
    pub trust_domain: String,
    pub root_namespace: String,
    /// The port every node's HBONE server listens on for its workloads' addresses.
    pub hbone_port: u16,
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Service>,
    pub policies: PolicyIndex,
    /// HTTP and gRPC routes, for the waypoints (see [`MeshState::routes_for`]).
    pub routes: Vec<Route>,
    /// Traffic policies, for the waypoints (see [`MeshState::traffic_for`]).
    pub traffic: Vec<TrafficPolicy>,
    /// namespace -> service name -> indexes into `traffic` attached to it.
    traffic_by_service: HashMap<String, HashMap<String, Vec<usize>>>,
    /// namespace -> service name -> indexes into `routes` attached to it.
    routes_by_service: HashMap<String, HashMap<String, Vec<usize>>>,
    by_ip: HashMap<IpAddr, usize>,
    by_vip: HashMap<SocketAddr, (usize, usize)>,
    /// Workload index -> the services it is an endpoint of.
    by_endpoint: HashMap<usize, Vec<usize>>,
    /// namespace -> name -> service index, for a bound service's waypoint (looked up by
    /// `&str`, so without allocating per connection).
    by_name: HashMap<String, HashMap<String, usize>>,
    /// namespace -> identities of the waypoint instances its services are bound to: the
    /// identities whose word on the original client a destination node takes.
    waypoint_identities: HashMap<String, Vec<crate::identity::SpiffeId>>,
    /// Round-robin cursors, one per service. They restart at each reload, which is harmless.
    cursors: Vec<AtomicUsize>,
}

/// What an original destination turned out to be.
#[derive(Debug)]
pub enum Destination<'a> {
    /// A service VIP and port, with the chosen endpoint (None when it has no endpoint).
    Service {
        service: &'a Service,
        port: &'a ServicePort,
        endpoint: Option<&'a Arc<Workload>>,
    },
    /// A workload addressed directly by one of its IPs.
    Workload(&'a Arc<Workload>),
    /// Not part of the mesh.
    External,
}

impl MeshState {
    /// Every (namespace, workload name) in the mesh: the workloads metric series may name.
    pub fn workload_names(&self) -> std::collections::HashSet<(&str, &str)> {
        self.workloads
            .iter()
            .map(|w| (w.namespace.as_str(), w.workload_name.as_str()))
            .collect()
    }

    /// Builds the indexes. `services[i].endpoints` must already hold indexes into `workloads`.
    pub fn new(
        trust_domain: String,
        root_namespace: String,
        hbone_port: u16,
        workloads: Vec<Arc<Workload>>,
        services: Vec<Service>,
        policies: PolicyIndex,
    ) -> Self {
        let mut by_ip = HashMap::with_capacity(workloads.len());
        for (i, w) in workloads.iter().enumerate() {
            for ip in &w.ips {
                by_ip.insert(*ip, i);
            }
        }
        let mut by_vip = HashMap::new();
        for (si, s) in services.iter().enumerate() {
            for vip in &s.vips {
                for (pi, p) in s.ports.iter().enumerate() {
                    by_vip.insert(SocketAddr::new(*vip, p.port), (si, pi));
                }
            }
        }
        let mut by_endpoint: HashMap<usize, Vec<usize>> = HashMap::new();
        for (si, s) in services.iter().enumerate() {
            for &w in &s.endpoints {
                by_endpoint.entry(w).or_default().push(si);
            }
        }
        let mut by_name: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (si, s) in services.iter().enumerate() {
            by_name
                .entry(s.namespace.clone())
                .or_default()
                .insert(s.name.clone(), si);
        }
        let mut waypoint_identities: HashMap<String, Vec<crate::identity::SpiffeId>> =
            HashMap::new();
        for s in &services {
            let Some(w) = s.waypoint.as_deref() else {
                continue;
            };
            let Some(&wi) = by_name.get(&s.namespace).and_then(|m| m.get(w)) else {
                continue;
            };
            let ids = waypoint_identities.entry(s.namespace.clone()).or_default();
            for &e in &services[wi].endpoints {
                let id = &workloads[e].identity;
                // A waypoint of this namespace is one that runs as this namespace.
                if id.namespace() == s.namespace && !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        let cursors = services.iter().map(|_| AtomicUsize::new(0)).collect();
        MeshState {
            trust_domain,
            root_namespace,
            hbone_port,
            workloads,
            services,
            policies,
            routes: Vec::new(),
            traffic: Vec::new(),
            traffic_by_service: HashMap::new(),
            routes_by_service: HashMap::new(),
            by_ip,
            by_vip,
            by_endpoint,
            by_name,
            waypoint_identities,
            cursors,
        }
    }

    /// The state with `routes` attached to the services their parentRefs name.
    pub fn with_routes(mut self, routes: Vec<Route>) -> Self {
        self.routes_by_service = index_by_service(&routes, |r| {
            r.service_parents()
                .map(|(ns, name, _)| (ns, name))
                .collect()
        });
        self.routes = routes;
        self
    }

    /// The state with traffic policies attached to the Services their targetRefs name.
    pub fn with_traffic(mut self, policies: Vec<TrafficPolicy>) -> Self {
        self.traffic_by_service = index_by_service(&policies, |p| p.services().collect());
        self.traffic = policies;
        self
    }

    /// The traffic policies attached to Service `namespace/name`, in configuration order
    /// (the waypoint merges them field by field; see its `traffic` module).
    pub fn traffic_for<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a TrafficPolicy> + 'a {
        self.traffic_by_service
            .get(namespace)
            .and_then(|m| m.get(name))
            .into_iter()
            .flatten()
            .map(|&i| &self.traffic[i])
    }

    /// The routes attached to Service `namespace/name`, in configuration order (precedence
    /// is the waypoint's to work out, per request port).
    pub fn routes_for<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes_by_service
            .get(namespace)
            .and_then(|m| m.get(name))
            .into_iter()
            .flatten()
            .map(|&i| &self.routes[i])
    }

    /// The service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        let &si = self.by_name.get(namespace)?.get(name)?;
        Some(&self.services[si])
    }

    /// The next endpoint of `service`, round robin (the waypoint's pick for a route backend).
    pub fn next_endpoint(&self, service: &Service) -> Option<&Arc<Workload>> {
        if service.endpoints.is_empty() {
            return None;
        }
        let si = *self.by_name.get(&service.namespace)?.get(&service.name)?;
        let n = self.cursors[si].fetch_add(1, Ordering::Relaxed);
        Some(&self.workloads[service.endpoints[n % service.endpoints.len()]])
    }

    /// The service's endpoints.
    pub fn endpoints_of<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        service.endpoints.iter().map(|&i| &self.workloads[i])
    }

    /// An empty mesh, used before the first configuration is loaded.
    pub fn empty() -> Self {
        Self::new(
            "cluster.local".into(),
            "weft-system".into(),
            15008,
            Vec::new(),
            Vec::new(),
            PolicyIndex::new(Vec::new(), "weft-system"),
        )
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip).map(|&i| &self.workloads[i])
    }

    /// The service a connection to a workload address belongs to: the first service that has
    /// the workload as an endpoint and `target.port()` as a target port. The destination side
    /// of a tunnel only sees the workload address, so this is how it names the service.
    pub fn service_of(&self, target: SocketAddr) -> Option<&Service> {
        let w = *self.by_ip.get(&target.ip())?;
        self.by_endpoint
            .get(&w)?
            .iter()
            .map(|&si| &self.services[si])
            .find(|s| s.ports.iter().any(|p| p.target() == target.port()))
    }

    /// The waypoint instance a connection to `service` goes through: an endpoint (round
    /// robin) of the service named by `service.waypoint` in the service's own namespace (a
    /// waypoint Gateway's Service). `None` when the service is bound but that waypoint is
    /// missing or has no HBONE endpoint: the caller must refuse, never go direct.
    pub fn waypoint_of(&self, service: &Service) -> Option<&Arc<Workload>> {
        let name = service.waypoint.as_deref()?;
        let &si = self.by_name.get(&service.namespace)?.get(name)?;
        let meshed = || {
            self.services[si]
                .endpoints
                .iter()
                .map(|&i| &self.workloads[i])
                // A waypoint terminates HBONE itself: its pods are never captured (mode
                // `none`), so what counts is that it is reached over HBONE, not its mode.
                .filter(|w| w.tunnel == super::workload::TunnelProtocol::Hbone)
        };
        let ready = meshed().count();
        if ready == 0 {
            return None;
        }
        let n = self.cursors[si].fetch_add(1, Ordering::Relaxed);
        meshed().nth(n % ready)
    }

    /// Whether `identity` is that of a waypoint instance serving services of `namespace`.
    pub fn is_waypoint_of(&self, namespace: &str, identity: &crate::identity::SpiffeId) -> bool {
        self.waypoint_identities
            .get(namespace)
            .is_some_and(|ids| ids.contains(identity))
    }

    /// The workloads scheduled on `node`.
    pub fn local_workloads<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads.iter().filter(move |w| w.node == node)
    }

    /// Classifies an original destination, picking a service endpoint round robin.
    pub fn resolve(&self, dst: SocketAddr) -> Destination<'_> {
        if let Some(&(si, pi)) = self.by_vip.get(&dst) {
            let service = &self.services[si];
            let endpoint = if service.endpoints.is_empty() {
                None
            } else {
                let n = self.cursors[si].fetch_add(1, Ordering::Relaxed);
                Some(&self.workloads[service.endpoints[n % service.endpoints.len()]])
            };
            return Destination::Service {
                service,
                port: &service.ports[pi],
                endpoint,
            };
        }
        match self.workload_by_ip(dst.ip()) {
            Some(w) => Destination::Workload(w),
            None => Destination::External,
        }
    }

    /// A JSON-able view for `/config_dump`.
    pub fn dump(&self) -> StateDump<'_> {
        StateDump {
            trust_domain: &self.trust_domain,
            root_namespace: &self.root_namespace,
            hbone_port: self.hbone_port,
            workloads: &self.workloads,
            services: &self.services,
            policies: self.policies.policies(),
            routes: &self.routes,
            traffic_policies: &self.traffic,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDump<'a> {
    pub trust_domain: &'a str,
    pub root_namespace: &'a str,
    pub hbone_port: u16,
    pub workloads: &'a [Arc<Workload>],
    pub services: &'a [Service],
    pub policies: &'a [crate::model::policy::AuthorizationPolicy],
    pub routes: &'a [Route],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub traffic_policies: &'a [TrafficPolicy],
}

/// The one place the current state lives. Readers take a cheap `Arc` snapshot per connection;
/// long-lived connections subscribe to learn about policy changes.
#[derive(Clone)]
pub struct StateStore {
    tx: Arc<watch::Sender<Arc<MeshState>>>,
}

impl StateStore {
    pub fn new(initial: MeshState) -> Self {
        let (tx, _) = watch::channel(Arc::new(initial));
        StateStore { tx: Arc::new(tx) }
    }

    pub fn current(&self) -> Arc<MeshState> {
        self.tx.borrow().clone()
    }

    /// Publishes `state` and returns the one it replaces, so that the caller chooses where a
    /// large old state is freed.
    pub fn replace(&self, state: MeshState) -> Arc<MeshState> {
        self.tx.send_replace(Arc::new(state))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.tx.subscribe()
    }
}

/// Positions of `items` by the Services each names, namespace then name. An item naming one
/// Service twice (two parentRefs to two ports) is listed once.
fn index_by_service<'a, T>(
    items: &'a [T],
    services: impl Fn(&'a T) -> Vec<(&'a str, &'a str)>,
) -> HashMap<String, HashMap<String, Vec<usize>>> {
    let mut by: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        for (ns, name) in services(item) {
            let list = by
                .entry(ns.to_owned())
                .or_default()
                .entry(name.to_owned())
                .or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }
    by
}
