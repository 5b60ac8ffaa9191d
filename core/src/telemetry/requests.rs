//! Request metrics, reported by waypoints: Istio's `istio_requests_total` and
//! `istio_request_duration_milliseconds` as `weft_*`, with Istio's connection labels plus the
//! request's protocol, response code, gRPC status and response flags.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::collections::HashSet;
use std::sync::Mutex;

use super::metrics::{ConnectionLabels, UNKNOWN};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub connection: ConnectionLabels,
    /// `http`, `http2` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status for gRPC requests, `-` otherwise.
    pub grpc_response_status: String,
    /// Envoy's short codes (`UH`, `UF`, `UT`, `URX`, `NR`, ...), comma separated, `-` when none.
    pub response_flags: String,
}

/// Istio's buckets for request durations, in milliseconds.
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Every label set in use, so the series of a workload or Service that is gone can be
    /// found and dropped.
    known: Mutex<HashSet<RequestLabels>>,
}

impl RequestMetrics {
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let m = RequestMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
            known: Mutex::default(),
        };
        registry.register(
            "weft_requests",
            "Requests handled by a waypoint",
            m.requests.clone(),
        );
        registry.register(
            "weft_request_duration_milliseconds",
            "Request duration, from the request's arrival to the end of the response",
            m.duration.clone(),
        );
        std::sync::Arc::new(m)
    }

    pub fn record(&self, labels: &RequestLabels, duration_ms: f64) {
        self.series(labels).record(duration_ms);
    }

    /// The series of `labels`, to be kept by a caller that records many requests with the same
    /// labels: recording through it neither builds nor hashes the labels again.
    ///
    /// A series that [`RequestMetrics::retain`] drops while a caller keeps it goes on counting
    /// unseen; callers key what they keep by the workload entry, which a reload replaces.
    pub fn series(&self, labels: &RequestLabels) -> RequestSeries {
        // One lock for the index and the families, so a prune cannot interleave and leave a
        // series nobody will ever remove.
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !known.contains(labels) {
            known.insert(labels.clone());
        }
        RequestSeries {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
        }
    }

    /// Drops every series that names a workload for which `workload(namespace, name)` is
    /// false or a destination Service for which `service(hostname)` is: a waypoint's series
    /// would otherwise outlive what they count.
    pub fn retain(&self, workload: impl Fn(&str, &str) -> bool, service: impl Fn(&str) -> bool) {
        let gone = |l: &RequestLabels| {
            let c = &l.connection;
            c.names_a_gone_workload(&workload)
                || (c.destination_service != UNKNOWN && !service(&c.destination_service))
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|l| {
            if gone(l) {
                self.requests.remove(l);
                self.duration.remove(l);
                false
            } else {
                true
            }
        });
    }
}

/// One label set's counter and histogram (shared with the registry's families).
#[derive(Clone)]
pub struct RequestSeries {
    requests: Counter,
    duration: Histogram,
}

impl RequestSeries {
    pub fn record(&self, duration_ms: f64) {
        self.requests.inc();
        self.duration.observe(duration_ms);
    }
}
