//! What one request and its response went through, filled in by the layers as they act on
//! it and read by the telemetry layer when the response ends: the access log and the
//! metric labels come from here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use weft_core::identity::SpiffeId;
use weft_core::model::Workload;

use crate::routes::BackendTarget;

/// Envoy's response flags, the short codes Istio's dashboards and access logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// No route matched (404).
    NoRoute,
    /// No healthy upstream: the backend Service is missing or has no endpoint.
    NoHealthyUpstream,
    /// Connecting to the upstream failed.
    UpstreamConnectFailure,
    /// The upstream reset or closed the connection before answering.
    UpstreamReset,
    /// A timeout (request or one attempt) fired.
    UpstreamTimeout,
    /// Retries were exhausted, or refused by the retry budget.
    RetryLimitExceeded,
    /// Denied by L7 authorization policy.
    Denied,
    /// The client went away before the response ended.
    DownstreamReset,
    /// The request was malformed (a path that does not normalise, ...).
    DownstreamProtocolError,
    /// A circuit breaker's limit was reached (`connectionPool`).
    UpstreamOverflow,
    /// Refused by a local rate limit.
    RateLimited,
    /// Delayed by fault injection.
    DelayInjected,
    /// Aborted by fault injection.
    FaultInjected,
}

impl Flag {
    pub fn code(self) -> &'static str {
        match self {
            Flag::NoRoute => "NR",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamConnectFailure => "UF",
            Flag::UpstreamReset => "UC",
            Flag::UpstreamTimeout => "UT",
            Flag::RetryLimitExceeded => "URX",
            Flag::Denied => "RBAC",
            Flag::DownstreamReset => "DC",
            Flag::DownstreamProtocolError => "DPE",
            Flag::UpstreamOverflow => "UO",
            Flag::RateLimited => "RL",
            Flag::DelayInjected => "DI",
            Flag::FaultInjected => "FI",
        }
    }
}

/// The upstream endpoint that answered. Shared with the mesh state, not copied: it is
/// recorded for every request and read only by the metrics, the log and the span.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub workload: Arc<Workload>,
    pub address: SocketAddr,
    /// Reached over HBONE, its identity checked: the destination principal is known.
    pub meshed: bool,
    pub backend: BackendTarget,
}

impl Upstream {
    /// The destination principal label: the endpoint's identity when it proved it.
    pub fn principal(&self) -> Option<&SpiffeId> {
        self.meshed.then_some(&self.workload.identity)
    }
}

#[derive(Debug, Default)]
pub struct Log {
    pub request_id: String,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Upstream>,
    pub flags: Vec<Flag>,
    pub attempts: u32,
    pub policy: Option<String>,
    /// The waypoint's span of the request.
    pub span: Option<crate::spans::SpanContext>,
}

/// Shared by the layers of one request (a request extension).
#[derive(Debug, Clone, Default)]
pub struct Exchange(Arc<Mutex<Log>>);

impl Exchange {
    pub fn with<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn flag(&self, flag: Flag) {
        self.with(|l| {
            if !l.flags.contains(&flag) {
                l.flags.push(flag);
            }
        });
    }
}

/// Flags a request's exchange, when it has one.
pub fn flag<B>(req: &http::Request<B>, f: Flag) {
    if let Some(x) = req.extensions().get::<Exchange>() {
        x.flag(f);
    }
}
