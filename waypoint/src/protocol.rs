//! Which protocol a bound service's connection speaks: the Service port's `appProtocol` when
//! it says, else detected from the client's first bytes (an HTTP/1 request line or the
//! HTTP/2 preface). Anything else, or a client that waits for the server to speak first, is
//! carried as TCP.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
    Detect,
}

/// `appProtocol` as Kubernetes and Istio use it.
pub fn mode(app_protocol: Option<&str>) -> Mode {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c") => Mode::Http,
        // TLS (`https`, `tls`) is opaque to the waypoint: it cannot see inside.
        Some("tcp" | "tls" | "https" | "mongo" | "mysql" | "redis") => Mode::Tcp,
        _ => Mode::Detect,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT",
];
/// A client that has not spoken by then waits for the server (a server-first protocol).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// `Some(true)`: HTTP; `Some(false)`: not HTTP; `None`: too few bytes to tell.
pub fn classify(b: &[u8]) -> Option<bool> {
    if b.is_empty() {
        return None;
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(true);
    }
    match b.iter().position(|&c| c == b' ') {
        Some(sp) => Some(METHODS.contains(&&b[..sp])),
        None if METHODS.iter().any(|m| m.starts_with(b)) => None,
        None => Some(false),
    }
}

/// Reads until the first bytes tell HTTP from anything else; returns what was read (to be
/// handed on first) and whether it is HTTP.
pub async fn detect(recv: &mut RecvStream) -> (Bytes, bool) {
    let mut seen = BytesMut::new();
    let read = async {
        loop {
            match recv.data().await {
                Some(Ok(chunk)) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    seen.extend_from_slice(&chunk);
                    if let Some(http) = classify(&seen) {
                        return http;
                    }
                }
                _ => return false,
            }
        }
    };
    let http = tokio::time::timeout(DETECT_TIMEOUT, read)
        .await
        .unwrap_or(false);
    (seen.freeze(), http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_protocols() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(classify(b"DELETE /x"), Some(true));
        assert_eq!(classify(H2_PREFACE), Some(true));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(false), "TLS");
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(false));
        assert_eq!(classify(b"FOO /"), Some(false));
        assert_eq!(mode(Some("HTTP")), Mode::Http);
        assert_eq!(mode(Some("tcp")), Mode::Tcp);
        assert_eq!(mode(None), Mode::Detect);
    }
}
