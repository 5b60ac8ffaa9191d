//! Traffic policy: how a waypoint treats the requests it sends to a Service and the requests
//! clients send to it, for what Gateway API leaves out. `networking.weft.dev/v1alpha1`
//! `TrafficPolicy`, attached by `targetRefs` (Gateway API's policy attachment, GEP-713) and
//! shaped after Istio's DestinationRule where the two overlap:
//!
//! - towards the Service's endpoints, when it is a backend: `loadBalancer`,
//!   `connectionPool` (circuit breaking and pool settings), `outlierDetection`;
//! - on requests addressed to the Service: `faults` and `rateLimits`.
//!
//! Durations are Gateway API durations (`100ms`, `1m30s`), like routes' timeouts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::PolicyTargetRef;

mod validate;

pub use validate::TrafficError;

/// One policy: name and namespace beside the spec, which is the custom resource's `spec`
/// (the mesh file writes it the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    pub name: String,
    pub namespace: String,
    pub spec: TrafficPolicySpec,
}

impl TrafficPolicy {
    /// `namespace/name`, how policies are named in logs, dumps and problems.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Services (`namespace`, `name`) this policy attaches to.
    pub fn services(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spec
            .target_refs
            .iter()
            .filter(|t| t.kind == "Service" && matches!(t.group.as_str(), "" | "core"))
            .map(|t| {
                (
                    t.namespace.as_deref().unwrap_or(&self.namespace),
                    t.name.as_str(),
                )
            })
    }
}

/// The custom resource's spec; the resource itself is [`TrafficPolicyResource`] (the name
/// `TrafficPolicy` is the model's).
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.weft.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    root = "TrafficPolicyResource",
    namespaced,
    status = "TrafficPolicyStatus",
    shortname = "wtp",
    category = "weft",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    /// The Services (`group: ""`, `kind: Service`) in the policy's namespace it applies to.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Tried in order; the first whose match holds applies (its delay and abort each draw
    /// their own percentage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// Every limit that applies to a request must have a token for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl TrafficPolicyResource {
    /// The model form, name and namespace beside the spec.
    pub fn to_model(&self) -> TrafficPolicy {
        TrafficPolicy {
            name: self.metadata.name.clone().unwrap_or_default(),
            namespace: self
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            spec: self.spec.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerType {
    /// Power of two choices over a peak-EWMA of latency weighted by requests in flight
    /// (linkerd2-proxy's balancer): the default.
    #[default]
    PeakEwma,
    RoundRobin,
    /// A hash of `consistentHash.httpHeaderName` picks the endpoint, so one key keeps its
    /// endpoint while the endpoint set is stable (requests without the header: PeakEwma).
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default, rename = "type")]
    pub kind: LoadBalancerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    pub http_header_name: String,
}

/// Limits and settings of the waypoint's connections to the Service's endpoints. Over a
/// limit a request fails at once with 503 and `response_flags="UO"` (Envoy's circuit
/// breakers, which Istio's `connectionPool` sets).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// Connections open to the Service's endpoints at once (HTTP/1.1 carries one request
    /// per connection at a time; HTTP/2 multiplexes one per endpoint and client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection: a free HTTP/1.1 one under `maxConnections`, or an
    /// HTTP/2 one being opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the Service at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// A connection is retired after this many requests (0 or absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// An idle connection is closed after this long (default 1h, as Envoy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// Passive health checking: an endpoint whose responses keep failing is ejected for
/// `baseEjectionTime` times the number of times it has been ejected, and comes back after.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (and connect failures) that eject (default 5; 0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504 and connect failures that eject (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are reviewed (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// The most of the Service's endpoints ejected at once, in percent (default 10; at least
    /// one endpoint may always be ejected, as in Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Absent: every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<FaultMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultMatch {
    /// Every one must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum HeaderMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// Gateway API's `HTTPHeaderMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default, rename = "type")]
    pub kind: HeaderMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    pub fixed_delay: String,
    /// Of the matching requests, 0 to 100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

/// Exactly one of `httpStatus` and `grpcStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// A gRPC status code by name (`UNAVAILABLE`) or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

/// A token bucket: `maxTokens` at most, `tokensPerFill` added every `fillInterval` (Envoy's
/// local rate limit). A request that finds no token is answered 429 with `retry-after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub max_tokens: u32,
    /// default `maxTokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: String,
    /// Only requests that took one of these routes (HTTPRoute or GRPCRoute names in the
    /// policy's namespace); empty: every request to the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// One bucket per source identity (the client's SPIFFE id), so one noisy client does not
    /// use up another's; else one bucket for all.
    #[serde(default)]
    pub per_source: bool,
}

/// gRPC status codes by name, as `grpcStatus` may give them.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `grpcStatus` as its number.
pub fn grpc_code(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return (n < GRPC_CODES.len() as u32).then_some(n);
    }
    GRPC_CODES.iter().position(|c| *c == s).map(|i| i as u32)
}

#[cfg(test)]
mod tests;
