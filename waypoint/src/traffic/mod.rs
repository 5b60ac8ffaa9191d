//! Traffic policy as the waypoint enforces it, compiled once per mesh version for every
//! Service it may send to: the balancer, circuit breaker and pool settings towards the
//! Service's endpoints, and the faults and rate limits of requests addressed to it.
//!
//! Several policies may attach to one Service: for `loadBalancer`, `connectionPool`,
//! `outlierDetection` and `faults` the first policy (configuration order) that sets the field
//! wins; every `rateLimits` entry of every policy applies. What is learnt at run time (endpoint
//! costs and health, circuit counters, token buckets) is carried from one version to the
//! next, because the mesh changes with every endpoint that comes and goes.

pub mod balance;
pub mod circuit;
pub mod fault;
pub mod limit;
pub mod outlier;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Serialize;
use weft_core::model::MeshState;
use weft_core::model::route::parse_duration;
use weft_core::model::traffic::{ConnectionPool, LoadBalancerType, TrafficPolicy};

use balance::Endpoints;
use circuit::Circuit;

/// An idle upstream connection is closed after this long unless a policy says otherwise
/// (Envoy's default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `connectionPool`, parsed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSettings {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    #[serde(with = "millis")]
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            max_requests_per_connection: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl PoolSettings {
    fn compile(p: &ConnectionPool) -> Self {
        PoolSettings {
            max_connections: p.max_connections,
            max_pending_requests: p.max_pending_requests,
            max_requests: p.max_requests,
            max_requests_per_connection: p.max_requests_per_connection.filter(|n| *n > 0),
            idle_timeout: p
                .idle_timeout
                .as_deref()
                .and_then(parse_duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// How one Service is treated, for one mesh version.
pub struct ServiceTraffic {
    /// The policies merged in (`namespace/name`), for logs and the dump.
    pub policies: Vec<String>,
    pub balancer: LoadBalancerType,
    pub hash_header: Option<HeaderName>,
    pub pool: PoolSettings,
    pub outlier: Option<outlier::Settings>,
    pub faults: Vec<fault::Compiled>,
    /// (the limit's policy namespace, the limit).
    pub limits: Vec<(String, Arc<limit::Limiter>)>,
    /// Kept across versions.
    pub endpoints: Arc<Endpoints>,
    pub circuit: Arc<Circuit>,
}

/// Whose token bucket: (Service `namespace/name`, policy `namespace/name`, index).
type LimitKey = (String, String, usize);

#[derive(Default)]
pub struct TrafficTable {
    services: HashMap<String, HashMap<String, Arc<ServiceTraffic>>>,
    limits: HashMap<LimitKey, Arc<limit::Limiter>>,
}

impl TrafficTable {
    /// Every Service of `state`, with what `previous` learnt of it.
    pub fn build(state: &MeshState, previous: &TrafficTable) -> Self {
        let mut services: HashMap<String, HashMap<String, Arc<ServiceTraffic>>> = HashMap::new();
        let mut limits = HashMap::new();
        for s in &state.services {
            let old = previous.service(&s.namespace, &s.name);
            let endpoints = old.map_or_else(Default::default, |o| o.endpoints.clone());
            let circuit = old.map_or_else(Default::default, |o| o.circuit.clone());
            let live: HashSet<&str> = state.endpoints_of(s).map(|w| w.uid.as_str()).collect();
            endpoints.retain(&live);
            let policies: Vec<&TrafficPolicy> = state.traffic_for(&s.namespace, &s.name).collect();
            let first = |f: fn(&TrafficPolicy) -> bool| policies.iter().find(|p| f(p)).copied();
            let lb = first(|p| p.spec.load_balancer.is_some())
                .and_then(|p| p.spec.load_balancer.as_ref());
            let mut compiled_limits = Vec::new();
            for p in &policies {
                for (i, spec) in p.spec.rate_limits.iter().enumerate() {
                    let key = (format!("{}/{}", s.namespace, s.name), p.key(), i);
                    let kept = previous
                        .limits
                        .get(&key)
                        .filter(|l| l.spec == *spec)
                        .cloned();
                    let Some(l) = kept.or_else(|| limit::Limiter::compile(spec).map(Arc::new))
                    else {
                        continue;
                    };
                    limits.insert(key, l.clone());
                    compiled_limits.push((p.namespace.clone(), l));
                }
            }
            let traffic = ServiceTraffic {
                policies: policies.iter().map(|p| p.key()).collect(),
                balancer: lb.map(|l| l.kind).unwrap_or_default(),
                hash_header: lb
                    .and_then(|l| l.consistent_hash.as_ref())
                    .and_then(|h| HeaderName::from_bytes(h.http_header_name.as_bytes()).ok()),
                pool: first(|p| p.spec.connection_pool.is_some())
                    .and_then(|p| p.spec.connection_pool.as_ref())
                    .map(PoolSettings::compile)
                    .unwrap_or_default(),
                outlier: first(|p| p.spec.outlier_detection.is_some())
                    .and_then(|p| p.spec.outlier_detection.as_ref())
                    .map(outlier::Settings::compile),
                faults: first(|p| !p.spec.faults.is_empty())
                    .map(|p| {
                        p.spec
                            .faults
                            .iter()
                            .filter_map(fault::Compiled::compile)
                            .collect()
                    })
                    .unwrap_or_default(),
                limits: compiled_limits,
                endpoints,
                circuit,
            };
            services
                .entry(s.namespace.clone())
                .or_default()
                .insert(s.name.clone(), Arc::new(traffic));
        }
        TrafficTable { services, limits }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceTraffic>> {
        self.services.get(namespace)?.get(name)
    }

    /// What `/config_dump` shows: the Services with a policy, as compiled, and their
    /// circuit counters.
    pub fn dump(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<(String, serde_json::Value)> = self
            .services
            .iter()
            .flat_map(|(ns, m)| m.iter().map(move |(name, t)| (ns, name, t)))
            .filter(|(_, _, t)| !t.policies.is_empty())
            .map(|(ns, name, t)| {
                let (requests, busy, pending) = t.circuit.counts();
                let key = format!("{ns}/{name}");
                let v = serde_json::json!({
                    "service": key,
                    "policies": t.policies,
                    "loadBalancer": format!("{:?}", t.balancer),
                    "hashHeader": t.hash_header.as_ref().map(|h| h.as_str()),
                    "connectionPool": t.pool,
                    "outlierDetection": t.outlier,
                    "faults": t.faults.len(),
                    "rateLimits": t.limits.iter().map(|(_, l)| &l.spec).collect::<Vec<_>>(),
                    "inFlight": {"requests": requests, "busyConnections": busy,
                                 "pendingRequests": pending,
                                 "openConnections": t.circuit.open_connections()},
                });
                (key, v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, v)| v).collect()
    }
}

/// Durations shown as milliseconds.
pub(crate) mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(policies: &str) -> MeshState {
        let text = format!(
            "workloads:
  - {{name: a, namespace: shop, serviceAccount: a, ips: [10.1.0.1], node: n, labels: {{app: web}}}}
services:
  - name: web
    namespace: shop
    vips: [10.96.0.10]
    ports: [{{port: 80}}]
    selector: {{app: web}}
trafficPolicies:
{policies}"
        );
        weft_core::config::load_str(&text, "mesh.yaml", std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}"))
            .state
    }

    const TWO: &str = "  - name: first
    namespace: shop
    spec:
      targetRefs: [{kind: Service, name: web}]
      loadBalancer: {type: RoundRobin}
      rateLimits: [{maxTokens: 2, fillInterval: 1m}]
  - name: second
    namespace: shop
    spec:
      targetRefs: [{kind: Service, name: web}]
      loadBalancer: {type: ConsistentHash, consistentHash: {httpHeaderName: x-user}}
      connectionPool: {maxRequests: 3}
      rateLimits: [{maxTokens: 5, fillInterval: 1m, perSource: true}]
";

    #[test]
    fn policies_merge_field_by_field_and_buckets_survive_a_rebuild() {
        let first = TrafficTable::build(&state(TWO), &TrafficTable::default());
        let t = first.service("shop", "web").expect("compiled");
        assert_eq!(t.policies, ["shop/first", "shop/second"]);
        assert_eq!(
            t.balancer,
            LoadBalancerType::RoundRobin,
            "the first sets it"
        );
        assert_eq!(
            t.pool.max_requests,
            Some(3),
            "the second fills what the first leaves"
        );
        assert_eq!(t.limits.len(), 2, "every limit applies");
        assert!(t.limits[0].1.take("x").allowed);
        assert!(t.limits[0].1.take("x").allowed);
        assert!(!t.limits[0].1.take("x").allowed);

        let second = TrafficTable::build(&state(TWO), &first);
        let t2 = second.service("shop", "web").unwrap();
        assert!(Arc::ptr_eq(&t.endpoints, &t2.endpoints));
        assert!(!t2.limits[0].1.take("x").allowed, "still spent");
        // A changed limit starts afresh.
        let changed = TrafficTable::build(
            &state(&TWO.replace("maxTokens: 2", "maxTokens: 4")),
            &second,
        );
        assert!(
            changed.service("shop", "web").unwrap().limits[0]
                .1
                .take("x")
                .allowed
        );
    }
}
