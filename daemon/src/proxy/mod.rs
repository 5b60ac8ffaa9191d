//! The node's proxies: `outbound` (15001) for connections leaving local workloads, `inbound`
//! (15008) for HBONE arriving for them, `plaintext` (15006) for non-mesh clients of permissive
//! workloads, `listeners` to bind and accept, `revocation` to close connections that a new
//! policy denies.

pub mod guard;
pub mod inbound;
pub mod listeners;
pub mod outbound;
pub mod plaintext;
pub mod revocation;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_core::hbone::{self, Pool};
use weft_core::identity::CertificateManager;
use weft_core::model::{StateStore, Workload};
use weft_core::telemetry::{ConnectionLabels, ConnectionMetrics};

use crate::capture::DestinationSource;

/// Everything a connection handler needs, shared by all of them.
pub struct Proxy {
    pub node: String,
    pub state: StateStore,
    pub certs: CertificateManager,
    pub pool: Pool,
    pub metrics: Arc<ConnectionMetrics>,
    pub hbone: hbone::Settings,
    /// SO_MARK on weftd's own sockets, so capture never takes them again.
    pub mark: Option<u32>,
    pub destinations: DestinationSource,
    pub guard: guard::SelfGuard,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Fires when the drain period is over: connections still open are closed.
    pub force_close: CancellationToken,
}

pub(crate) fn set_source(l: &mut ConnectionLabels, w: &Workload) {
    l.source_workload = w.workload_name.clone();
    l.source_workload_namespace = w.namespace.clone();
    l.source_principal = w.identity.to_string();
}

pub(crate) fn set_destination(l: &mut ConnectionLabels, w: &Workload) {
    l.destination_workload = w.workload_name.clone();
    l.destination_workload_namespace = w.namespace.clone();
    l.destination_principal = w.identity.to_string();
}
