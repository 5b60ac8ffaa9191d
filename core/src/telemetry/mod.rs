//! What the mesh reports: connection metrics in Istio's schema, the per-connection access log,
//! and the HTTP server the metrics and readiness ports share.

pub mod accesslog;
pub mod httpd;
pub mod metrics;
pub mod requests;

pub use accesslog::AccessLog;
pub use metrics::{ConnectionLabels, ConnectionMetrics, FailureReason, Reporter, SecurityPolicy};
pub use requests::{RequestLabels, RequestMetrics, RequestSeries};
