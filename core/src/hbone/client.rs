//! Opening HBONE connections: TCP, TLS 1.3 with ALPN h2 and the source workload's certificate,
//! an HTTP/2 handshake with large windows, and a keepalive that declares silent peers dead.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request};
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{HboneError, Settings, headers};
use crate::identity::SpiffeId;

/// Where the client's TLS configuration comes from: the certificate of the source identity and a
/// verifier that accepts only the destination identity.
pub trait ClientTlsProvider: Send + Sync + 'static {
    fn client_config<'a>(
        &'a self,
        source: &'a SpiffeId,
        destination: &'a SpiffeId,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<rustls::ClientConfig>, HboneError>> + Send + 'a>>;
}

/// One CONNECT: the target and the metadata that travels with it.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// `:authority`, the address of the target workload (or service, via a waypoint).
    pub authority: SocketAddr,
    /// The original client's address, sent as `forwarded`.
    pub client: SocketAddr,
    pub baggage: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
    /// A waypoint's CONNECT on behalf of a client: the client's identity, sent as
    /// [`headers::ORIGINAL_PRINCIPAL`]. The destination believes it only from the waypoint of
    /// the destination service's namespace.
    pub original_principal: Option<HeaderValue>,
}

impl ConnectRequest {
    pub fn to_http(&self) -> Result<Request<()>, HboneError> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(self.authority.to_string())
            .header("forwarded", headers::forwarded_for(self.client));
        if let Some(b) = &self.baggage {
            req = req.header("baggage", b.clone());
        }
        if let Some(t) = &self.traceparent {
            req = req.header("traceparent", t.clone());
        }
        if let Some(p) = &self.original_principal {
            req = req.header(headers::ORIGINAL_PRINCIPAL, p.clone());
        }
        req.body(())
            .map_err(|e| HboneError::Request(format!("CONNECT {}: {e}", self.authority)))
    }
}

/// A TCP connection from weftd itself, marked so that capture never takes it again.
pub async fn connect_tcp(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    connect_tcp_from(addr, mark, None).await
}

/// [`connect_tcp`] from a chosen source address.
pub async fn connect_tcp_from(
    addr: SocketAddr,
    mark: Option<u32>,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// An established HTTP/2 connection to a peer's HBONE server. `closed` fires when the
/// connection ends for any reason, so the pool stops handing it out.
pub struct Established {
    pub send: SendRequest<Bytes>,
    pub closed: CancellationToken,
}

/// Opens one HBONE connection and spawns the task that drives it.
pub async fn establish(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    settings: &Settings,
    mark: Option<u32>,
    source: Option<std::net::IpAddr>,
) -> Result<Established, HboneError> {
    let work = async {
        let tcp = connect_tcp_from(addr, mark, source)
            .await
            .map_err(|source| HboneError::Connect { addr, source })?;
        let tls = TlsConnector::from(tls)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|source| HboneError::Tls { addr, source })?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(HboneError::NoAlpn { addr });
        }
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_concurrent_streams(0)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::H2 { addr, source })?;
        Ok((send, conn))
    };
    let (send, mut conn) = tokio::time::timeout(settings.connect_timeout, work)
        .await
        .map_err(|_| HboneError::Timeout { addr })??;
    let closed = CancellationToken::new();
    let ping = conn.ping_pong();
    let done = closed.clone();
    let (interval, timeout) = (settings.keepalive_interval, settings.keepalive_timeout);
    tokio::spawn(async move {
        let keepalive = async {
            let Some(mut ping) = ping else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(interval).await;
                match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break format!("keepalive failed: {e}"),
                    Err(_) => break format!("no PING answer within {timeout:?}"),
                }
            }
        };
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(peer = %addr, error = %e, "HBONE connection ended");
                }
            }
            why = keepalive => tracing::warn!(peer = %addr, "closing HBONE connection: {why}"),
        }
        done.cancel();
    });
    Ok(Established { send, closed })
}

/// The node's certificate manager is the client's TLS source: it holds the source workload's
/// certificate, and builds a verifier for the destination identity per new connection.
impl ClientTlsProvider for crate::identity::CertificateManager {
    fn client_config<'a>(
        &'a self,
        source: &'a SpiffeId,
        destination: &'a SpiffeId,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<rustls::ClientConfig>, HboneError>> + Send + 'a>>
    {
        Box::pin(async move {
            let failed = |reason: String| HboneError::Identity {
                identity: source.to_string(),
                reason,
            };
            let cert = self.get(source).await.map_err(|e| failed(e.to_string()))?;
            cert.client_config(destination)
                .map_err(|e| failed(e.to_string()))
        })
    }
}
