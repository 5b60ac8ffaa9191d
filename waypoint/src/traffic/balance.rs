//! Which endpoint of a backend Service a request goes to.
//!
//! - PeakEwma (the default, linkerd2-proxy's balancer): two endpoints drawn at random, the
//!   one with the lower cost taken, cost = a peak-sensitive moving average of its response
//!   time times (requests in flight + 1). A slow or busy endpoint is seen at its first slow
//!   answer (the peak) and forgotten slowly (decay over [`DECAY`]).
//! - RoundRobin.
//! - ConsistentHash: rendezvous hashing of a header's value over the endpoints, so a key
//!   keeps its endpoint while the set is stable and only the keys of an endpoint that goes
//!   move.
//!
//! Ejected endpoints (see `outlier`) are passed over; when every endpoint is ejected all of
//! them are used again (Envoy's panic threshold), since refusing everything helps nobody.
//!
//! Hand-written rather than `tower::balance`: tower's balancers own one `Service` per
//! endpoint and discover endpoints through a stream, while here the endpoint set is the mesh
//! version each request carries and connections are pooled per client identity below.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use weft_core::model::Workload;
use weft_core::model::traffic::LoadBalancerType;

use super::outlier::{self, Ejection};

/// How quickly a response time is forgotten.
const DECAY: Duration = Duration::from_secs(10);
/// The cost of an endpoint nothing is known of yet: low, so a new endpoint is tried soon,
/// and its first answer sets its real cost.
const DEFAULT_RTT: Duration = Duration::from_millis(5);

/// How one attempt to an endpoint ended, for its cost and its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection was reset before a response.
    Reset,
}

/// What the balancer knows of one endpoint; kept across mesh versions.
pub struct EndpointStats {
    in_flight: AtomicU32,
    inner: Mutex<Health>,
}

pub(super) struct Health {
    /// Peak EWMA of response times, in nanoseconds, as of `stamp`.
    cost_ns: f64,
    stamp: Instant,
    pub(super) ejection: Ejection,
}

impl EndpointStats {
    fn new(now: Instant) -> Self {
        EndpointStats {
            in_flight: AtomicU32::new(0),
            inner: Mutex::new(Health {
                cost_ns: DEFAULT_RTT.as_nanos() as f64,
                stamp: now,
                ejection: Ejection::default(),
            }),
        }
    }

    pub(super) fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load(&self, now: Instant) -> f64 {
        let cost = self.health().decayed(now);
        cost * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

impl Health {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.cost_ns * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let cost = self.decayed(now);
        self.cost_ns = if rtt > cost {
            rtt
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            cost * w + rtt * (1.0 - w)
        };
        self.stamp = now;
    }
}

pub struct InFlight(Arc<EndpointStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one Service as the balancer keeps them, by workload uid.
#[derive(Default)]
pub struct Endpoints {
    stats: RwLock<HashMap<String, Arc<EndpointStats>>>,
    cursor: AtomicUsize,
    /// Endpoints ejected now (lets the common case skip the health check of each).
    pub(super) ejected: AtomicU32,
}

impl Endpoints {
    pub fn stats(&self, w: &Workload) -> Arc<EndpointStats> {
        if let Some(s) = self
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&w.uid)
        {
            return s.clone();
        }
        let mut m = self.stats.write().unwrap_or_else(|p| p.into_inner());
        m.entry(w.uid.clone())
            .or_insert_with(|| Arc::new(EndpointStats::new(Instant::now())))
            .clone()
    }

    /// Forgets endpoints that are gone (called when a new mesh version is compiled). Requests
    /// in flight may still hold their stats: those are marked gone, so that their answers
    /// neither eject nor readmit an endpoint the count no longer covers.
    pub fn retain(&self, live: &std::collections::HashSet<&str>) {
        let mut m = self.stats.write().unwrap_or_else(|p| p.into_inner());
        m.retain(|uid, s| {
            let keep = live.contains(uid.as_str());
            if !keep && s.health().ejection.forget() {
                self.ejected.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }

    /// The endpoint for one request of the `n` endpoints `at(0..n)`, with its stats. Only
    /// when some are ejected is a list of the others made.
    pub fn pick<'a>(
        &self,
        kind: LoadBalancerType,
        hash_key: Option<&[u8]>,
        n: usize,
        at: impl Fn(usize) -> &'a Arc<Workload>,
    ) -> Option<(&'a Arc<Workload>, Arc<EndpointStats>)> {
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        let eligible: Option<Vec<usize>> = (self.ejected.load(Ordering::Relaxed) > 0)
            .then(|| {
                (0..n)
                    .filter(|&i| !outlier::is_out(&self.stats(at(i)), &self.ejected, now))
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty());
        let (n, nth) = match &eligible {
            Some(v) => (v.len(), v.as_slice()),
            None => (n, &[][..]),
        };
        let endpoint = |k: usize| at(if nth.is_empty() { k } else { nth[k] });
        let (k, stats) = match (kind, hash_key) {
            _ if n == 1 => (0, None),
            (LoadBalancerType::RoundRobin, _) => {
                (self.cursor.fetch_add(1, Ordering::Relaxed) % n, None)
            }
            (LoadBalancerType::ConsistentHash, Some(key)) => {
                (rendezvous(key, (0..n).map(endpoint)), None)
            }
            _ => {
                let a = fastrand::usize(0..n);
                let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
                let (sa, sb) = (self.stats(endpoint(a)), self.stats(endpoint(b)));
                if sb.load(now) < sa.load(now) {
                    (b, Some(sb))
                } else {
                    (a, Some(sa))
                }
            }
        };
        let w = endpoint(k);
        Some((w, stats.unwrap_or_else(|| self.stats(w))))
    }

    /// An attempt's response time and outcome, for the endpoint's cost and health.
    pub fn record(
        &self,
        stats: &EndpointStats,
        rtt: Duration,
        outcome: Outcome,
        outlier: Option<&outlier::Settings>,
        endpoints: usize,
    ) {
        let now = Instant::now();
        let mut h = stats.health();
        h.observe(rtt, now);
        if let Some(o) = outlier {
            outlier::observe(&mut h, o, outcome, &self.ejected, endpoints, now);
        }
    }
}

/// The position of the endpoint whose hash with `key` is highest (highest random weight).
fn rendezvous<'a>(key: &[u8], endpoints: impl Iterator<Item = &'a Arc<Workload>>) -> usize {
    // A fixed-key hasher: every waypoint replica must map a key to the same endpoint.
    let hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    endpoints
        .enumerate()
        .max_by_key(|(_, w)| {
            let mut h = hasher.build_hasher();
            h.write(key);
            h.write(w.uid.as_bytes());
            h.finish()
        })
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoint_is_none_not_a_panic() {
        for kind in [
            LoadBalancerType::PeakEwma,
            LoadBalancerType::RoundRobin,
            LoadBalancerType::ConsistentHash,
        ] {
            let none = |_: usize| -> &Arc<Workload> { unreachable!("no endpoint to look at") };
            assert!(
                Endpoints::default()
                    .pick(kind, Some(b"k"), 0, none)
                    .is_none()
            );
        }
    }

    #[test]
    fn a_slow_answer_counts_at_once_and_is_forgotten_slowly() {
        let t0 = Instant::now();
        let mut h = EndpointStats::new(t0).health().cost_ns;
        assert_eq!(h, DEFAULT_RTT.as_nanos() as f64);
        let s = EndpointStats::new(t0);
        s.health().observe(Duration::from_millis(100), t0);
        let peak = s.health().decayed(t0);
        assert!((peak - 100e6).abs() < 1.0, "the peak is taken: {peak}");
        s.health()
            .observe(Duration::from_millis(1), t0 + Duration::from_millis(100));
        h = s.health().decayed(t0 + Duration::from_millis(100));
        assert!(h > 90e6, "one fast answer does not erase a slow one: {h}");
        let later = s.health().decayed(t0 + Duration::from_secs(60));
        assert!(later < 1e6, "decays over time: {later}");
    }
}
