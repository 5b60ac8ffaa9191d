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
/// A client that has not spoken by then waits for the server (a server-first protocol).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A request line longer than this is not one worth waiting for.
const MAX_LINE: usize = 8192;

/// RFC 9110 `tchar`, what a method is made of.
fn tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// `Some(true)`: HTTP; `Some(false)`: not HTTP; `None`: too few bytes to tell. HTTP/1 is told
/// by the grammar of a request line (`method SP target SP HTTP/1.x`), any method, after the
/// empty lines servers ignore (RFC 9112 2.2): a fixed list of methods would send the others,
/// and a leading CRLF, around the L7 layers as TCP.
pub fn classify(b: &[u8]) -> Option<bool> {
    let start = b.iter().position(|&c| c != b'\r' && c != b'\n')?;
    let b = &b[start..];
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(true);
    }
    let end = b.iter().position(|&c| c == b'\n');
    let line = &b[..end.unwrap_or(b.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&c| c == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next();
    let version = parts.next();
    let method_ok = !method.is_empty() && method.iter().all(|&c| tchar(c));
    let target_ok = |t: &[u8]| t.iter().all(|&c| c.is_ascii_graphic());
    const V: &[u8] = b"HTTP/1.";
    let version_ok = |v: &[u8], whole: bool| {
        let k = v.len().min(V.len());
        v[..k] == V[..k]
            && v.get(V.len()).is_none_or(|c| c.is_ascii_digit())
            && v.len() <= V.len() + 1
            && (!whole || v.len() == V.len() + 1)
    };
    if end.is_some() {
        return Some(
            method_ok
                && target.is_some_and(|t| !t.is_empty() && target_ok(t))
                && version.is_some_and(|v| version_ok(v, true)),
        );
    }
    // An incomplete line: still possibly a request line?
    let prefix_ok = match (target, version) {
        (None, _) => method.iter().all(|&c| tchar(c)),
        (Some(t), None) => method_ok && target_ok(t),
        (Some(t), Some(v)) => method_ok && !t.is_empty() && target_ok(t) && version_ok(v, false),
    };
    if !prefix_ok || b.len() > MAX_LINE {
        return Some(false);
    }
    None
}

/// Reads until the first bytes tell HTTP from anything else; returns what was read (to be
/// handed on first) and whether it is HTTP. Bytes that still could be HTTP when the wait is
/// over count as HTTP: the L7 layers answer what is malformed, and nothing that may be a
/// request goes around them.
pub async fn detect(recv: &mut RecvStream) -> (Bytes, bool) {
    let mut seen = BytesMut::new();
    let read = async {
        loop {
            match recv.data().await {
                Some(Ok(chunk)) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    seen.extend_from_slice(&chunk);
                    if let Some(http) = classify(&seen) {
                        return Some(http);
                    }
                }
                _ => return None,
            }
        }
    };
    let decided = tokio::time::timeout(DETECT_TIMEOUT, read)
        .await
        .ok()
        .flatten();
    let http = match decided {
        Some(http) => http,
        // Silence (a server-first protocol) or an ended stream is TCP; a start of a request
        // line is HTTP.
        None => !seen.is_empty() && classify(&seen).is_none(),
    };
    (seen.freeze(), http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_protocols() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(classify(b"\r\nPROPFIND /x HTTP/1.1\r\n"), Some(true));
        assert_eq!(
            classify(b"DELETE /x"),
            None,
            "a request line, not complete yet"
        );
        assert_eq!(classify(b"DELETE /x HTTP/1"), None);
        assert_eq!(classify(b"DELETE /x FTP/1"), Some(false));
        assert_eq!(
            classify(b"SET key value\r\n"),
            Some(false),
            "a Redis inline command"
        );
        assert_eq!(classify(H2_PREFACE), Some(true));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(false), "TLS");
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.6\r\n"), Some(false));
        assert_eq!(classify(b"FOO /"), None);
        assert_eq!(classify(b"FOO / HTTP/1.0\n"), Some(true));
        assert_eq!(mode(Some("HTTP")), Mode::Http);
        assert_eq!(mode(Some("tcp")), Mode::Tcp);
        assert_eq!(mode(None), Mode::Detect);
    }
}
