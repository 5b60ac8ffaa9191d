//! What the mesh reports: connection metrics in Istio's schema and the per-connection access log.

pub mod accesslog;
pub mod metrics;

pub use accesslog::AccessLog;
pub use metrics::{ConnectionLabels, ConnectionMetrics, FailureReason, Reporter, SecurityPolicy};
