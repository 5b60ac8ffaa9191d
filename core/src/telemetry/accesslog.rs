//! One structured line per connection, written when it ends, on the `weft::access` target so it
//! can be filtered or routed apart from the daemon's own logs.

use std::net::SocketAddr;
use std::time::Duration;

/// What is known about a connection when it ends. Empty strings are logged as `-`.
#[derive(Debug, Default)]
pub struct AccessLog<'a> {
    pub direction: &'a str,
    pub src_addr: Option<SocketAddr>,
    pub src_workload: &'a str,
    pub src_identity: &'a str,
    pub dst_addr: Option<SocketAddr>,
    pub dst_workload: &'a str,
    pub dst_identity: &'a str,
    pub dst_service: &'a str,
    /// Bytes the source sent (the request direction), whichever side logs.
    pub bytes_sent: u64,
    /// Bytes the source received (the response direction).
    pub bytes_received: u64,
    pub duration: Duration,
    /// `ok`, or why it failed.
    pub outcome: &'a str,
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

impl AccessLog<'_> {
    pub fn emit(&self) {
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        tracing::info!(
            target: "weft::access",
            direction = self.direction,
            src.addr = %addr(self.src_addr),
            src.workload = or_dash(self.src_workload),
            src.identity = or_dash(self.src_identity),
            dst.addr = %addr(self.dst_addr),
            dst.workload = or_dash(self.dst_workload),
            dst.identity = or_dash(self.dst_identity),
            dst.service = or_dash(self.dst_service),
            bytes_sent = self.bytes_sent,
            bytes_received = self.bytes_received,
            duration_ms = self.duration.as_millis() as u64,
            outcome = self.outcome,
            "connection complete"
        );
    }
}
