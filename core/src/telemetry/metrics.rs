//! Connection metrics with Istio's names and labels (`istio_` becomes `weft_`), so Istio
//! dashboards port by renaming.
//!
//! Direction follows Istio: `received_bytes` counts the request direction (client to server),
//! `sent_bytes` the response direction, whoever reports.
//!
//! `prometheus-client` is used instead of the `metrics` facade because a service mesh must drop
//! the series of workloads that are gone, and only `prometheus-client` can remove one label set.

use std::collections::HashSet;
use std::sync::Mutex;

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
    /// A waypoint, between the source's node and the destination's (Istio's `waypoint`).
    Waypoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    MutualTls,
    None,
}

/// Istio's standard TCP label set. Unknown values are `unknown`, as in Istio.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub connection_security_policy: SecurityPolicy,
}

pub const UNKNOWN: &str = "unknown";

/// Label values are Istio's lowercase words.
macro_rules! label_values {
    ($($t:ty { $($v:ident => $s:literal),* $(,)? })*) => {$(
        impl $t {
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
                e.write_str(self.as_str())
            }
        }
    )*};
}

label_values! {
    Reporter { Source => "source", Destination => "destination", Waypoint => "waypoint" }
    SecurityPolicy { MutualTls => "mutual_tls", None => "none" }
    FailureReason {
        Denied => "denied",
        Unreachable => "unreachable",
        BadRequest => "bad_request",
        UnknownSource => "unknown_source",
        PlaintextRefused => "plaintext_refused",
        Identity => "identity",
        NoWaypoint => "no_waypoint",
    }
}

impl ConnectionLabels {
    pub fn new(reporter: Reporter) -> Self {
        let u = || UNKNOWN.to_string();
        ConnectionLabels {
            reporter,
            source_workload: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            destination_workload: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_service: u(),
            connection_security_policy: SecurityPolicy::None,
        }
    }

    /// Whether its source or destination is a workload for which `exists(namespace, name)`
    /// is false: what a series pruned on reload is.
    pub(crate) fn names_a_gone_workload(&self, exists: &impl Fn(&str, &str) -> bool) -> bool {
        let gone = |ns: &str, name: &str| name != UNKNOWN && !exists(ns, name);
        gone(&self.source_workload_namespace, &self.source_workload)
            || gone(
                &self.destination_workload_namespace,
                &self.destination_workload,
            )
    }
}

/// Why a connection failed; a label on `weft_tcp_connections_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// Authorization policy denied it.
    Denied,
    /// The target or the peer node could not be reached.
    Unreachable,
    /// The request was malformed or named a target that is not here.
    BadRequest,
    /// The source is not a workload of this node.
    UnknownSource,
    /// Plaintext to a workload that only accepts mutual TLS.
    PlaintextRefused,
    /// No certificate for the source identity.
    Identity,
    /// The service is bound to a waypoint that is missing or has no ready instance; the
    /// connection is refused rather than sent around it.
    NoWaypoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    #[prometheus(flatten)]
    pub connection: ConnectionLabels,
    pub reason: FailureReason,
}

/// The connection metric families.
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    sent: Family<ConnectionLabels, Counter>,
    received: Family<ConnectionLabels, Counter>,
    failed: Family<FailureLabels, Counter>,
    /// Every label set in use, so the series of a removed workload can be found and dropped.
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    connections: HashSet<ConnectionLabels>,
    failures: HashSet<FailureLabels>,
}

impl ConnectionMetrics {
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let m = ConnectionMetrics::default();
        registry.register(
            "weft_tcp_connections_opened",
            "TCP connections opened through the mesh",
            m.opened.clone(),
        );
        registry.register(
            "weft_tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "weft_tcp_sent_bytes",
            "Bytes sent in the response direction (server to client)",
            m.sent.clone(),
        );
        registry.register(
            "weft_tcp_received_bytes",
            "Bytes received in the request direction (client to server)",
            m.received.clone(),
        );
        registry.register(
            "weft_tcp_connections_failed",
            "TCP connections that could not be established, by reason",
            m.failed.clone(),
        );
        std::sync::Arc::new(m)
    }

    /// Records `labels` as in use and updates its series under one lock, so a reload that
    /// prunes series cannot interleave and leave a series nobody will ever remove.
    fn with_series(&self, labels: &ConnectionLabels, f: impl FnOnce()) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !k.connections.contains(labels) {
            k.connections.insert(labels.clone());
        }
        f();
    }

    pub fn opened(&self, labels: &ConnectionLabels) {
        self.with_series(labels, || {
            self.opened.get_or_create(labels).inc();
        });
    }

    /// `request_bytes` went client to server, `response_bytes` server to client.
    pub fn closed(&self, labels: &ConnectionLabels, request_bytes: u64, response_bytes: u64) {
        self.with_series(labels, || {
            self.closed.get_or_create(labels).inc();
            self.received.get_or_create(labels).inc_by(request_bytes);
            self.sent.get_or_create(labels).inc_by(response_bytes);
        });
    }

    pub fn failed(&self, labels: &ConnectionLabels, reason: FailureReason) {
        let l = FailureLabels {
            connection: labels.clone(),
            reason,
        };
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !k.failures.contains(&l) {
            k.failures.insert(l.clone());
        }
        self.failed.get_or_create(&l).inc();
    }

    /// Drops every series that names a workload for which `exists(namespace, name)` is false.
    pub fn retain_workloads(&self, exists: impl Fn(&str, &str) -> bool) {
        let gone = |l: &ConnectionLabels| l.names_a_gone_workload(&exists);
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        k.connections.retain(|l| {
            if gone(l) {
                self.opened.remove(l);
                self.closed.remove(l);
                self.sent.remove(l);
                self.received.remove(l);
                false
            } else {
                true
            }
        });
        k.failures.retain(|l| {
            if gone(&l.connection) {
                self.failed.remove(l);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn labels(dst: &str) -> ConnectionLabels {
        let mut l = ConnectionLabels::new(Reporter::Destination);
        l.destination_workload = dst.into();
        l.destination_workload_namespace = "default".into();
        l.connection_security_policy = SecurityPolicy::MutualTls;
        l
    }

    #[test]
    fn names_labels_and_removal() {
        let mut reg = Registry::default();
        let m = ConnectionMetrics::register(&mut reg);
        m.opened(&labels("echo"));
        m.opened(&labels("gone"));
        m.closed(&labels("gone"), 10, 20);
        m.failed(&labels("gone"), FailureReason::Denied);
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(out.contains("weft_tcp_connections_opened_total{reporter=\"destination\""));
        assert!(out.contains("connection_security_policy=\"mutual_tls\""));
        assert!(out.contains("reason=\"denied\""));
        assert!(out.contains("destination_workload=\"gone\""));
        m.retain_workloads(|_, name| name == "echo");
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(!out.contains("destination_workload=\"gone\""), "{out}");
        assert!(out.contains("destination_workload=\"echo\""));
    }
}
