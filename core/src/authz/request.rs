//! What a waypoint knows about an HTTP request when it authorizes it, on top of the connection.

/// One HTTP request as the waypoint's authorization reads it. Borrowed from the request, so
/// building one per request costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The method as sent (`GET`); Istio matches methods case-sensitively.
    pub method: &'a str,
    /// The path after [`normalize_path`](super::normalize_path), without the query string.
    /// Policies must see the same path routing sees, or `/a/../admin` slips past
    /// `paths: ["/admin*"]`.
    pub path: &'a str,
    /// The Host header (HTTP/1) or `:authority` (HTTP/2) as sent, possibly with a port.
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
}
