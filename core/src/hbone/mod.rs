//! HBONE: TCP connections carried as HTTP/2 CONNECT streams over mutual TLS, on the wire exactly
//! as Istio ambient does it, so that weft and Istio nodes that trust one root can talk.
//!
//! `client` opens tunnels, `pool` shares them between connections, `server` accepts them,
//! `splice` moves bytes between a TCP socket and a stream, `headers` reads and writes the
//! request metadata.

pub mod client;
pub mod headers;
pub mod io;
pub mod pool;
pub mod server;
pub mod splice;

use std::time::Duration;

pub use client::{ClientTlsProvider, ConnectRequest};
pub use io::StreamIo;
pub use pool::{MarkFor, Pool, PoolKey, PooledStream, no_mark};
pub use splice::{SpliceEnd, SpliceOutcome, splice, splice_streams, splice_tcp};

/// Flow-control and multiplexing settings. The defaults are Istio's, which are sized so that
/// one stream can fill a fast link: the 64 KiB HTTP/2 default would cap a stream at one window
/// per round trip.
#[derive(Debug, Clone)]
pub struct Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    /// Streams per pooled connection before the pool opens another.
    pub max_streams: u32,
    /// A pooled connection with no stream for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval, and how long to wait for the PONG before the peer is declared dead.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// TCP connect + TLS + HTTP/2 handshake to a peer.
    pub connect_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_streams: 100,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a tunnel could not be opened. The variants map to what the caller reports: a refused
/// policy, an unreachable peer, a TLS failure.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("no certificate for {identity}: {reason}")]
    Identity { identity: String, reason: String },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 with {addr}: {source}")]
    H2 {
        addr: std::net::SocketAddr,
        source: h2::Error,
    },
    #[error("peer {addr} did not negotiate ALPN h2")]
    NoAlpn { addr: std::net::SocketAddr },
    #[error("timed out opening a tunnel to {addr}")]
    Timeout { addr: std::net::SocketAddr },
    #[error("peer answered {status} to CONNECT {authority}")]
    Status {
        status: http::StatusCode,
        authority: String,
    },
    #[error("{reason} ({ago:?} ago; not retrying {addr} yet)")]
    RecentFailure {
        addr: std::net::SocketAddr,
        ago: Duration,
        reason: String,
    },
    #[error("bad CONNECT request: {0}")]
    Request(String),
}
