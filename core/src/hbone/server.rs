//! Accepting HBONE: the HTTP/2 server side of one mutual-TLS connection, and the parsing of
//! each CONNECT into a target the node can check.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Settings, headers};
use crate::identity::{SpiffeId, connection_peer_identity};

/// How long a peer may take to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an HBONE connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("refused HBONE TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HBONE TLS handshake timed out")]
    Timeout,
    #[error("the client's certificate names no usable identity: {0}")]
    Identity(crate::identity::VerifyError),
}

/// Mutual TLS with `config` (whose verifier requires a client certificate of the trust
/// domain), within [`TLS_HANDSHAKE_TIMEOUT`]; returns the stream and the client's identity.
pub async fn accept_mtls(
    tcp: tokio::net::TcpStream,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> Result<
    (
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SpiffeId,
    ),
    AcceptError,
> {
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(AcceptError::Tls(e)),
        Err(_) => return Err(AcceptError::Timeout),
    };
    let source = connection_peer_identity(tls.get_ref().1).map_err(AcceptError::Identity)?;
    Ok((tls, source))
}

/// A CONNECT request, checked for shape.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    /// `:authority`
    pub target: SocketAddr,
    /// From `forwarded: for=`; advisory.
    pub client: Option<SocketAddr>,
    pub baggage: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
    /// The client a waypoint says it connects for ([`headers::ORIGINAL_PRINCIPAL`]);
    /// believed only from the right waypoint (the receiver decides), ignored when malformed.
    pub original_principal: Option<crate::identity::SpiffeId>,
}

/// Checks that `req` is a CONNECT to `ip:port`. The error is the status to answer with.
pub fn parse_connect<B>(req: &Request<B>) -> Result<ConnectTarget, (StatusCode, String)> {
    if req.method() != Method::CONNECT {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not CONNECT", req.method()),
        ));
    }
    let authority = req.uri().authority().ok_or((
        StatusCode::BAD_REQUEST,
        "CONNECT without :authority".to_string(),
    ))?;
    let target: SocketAddr = authority.as_str().parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("authority {:?} is not ip:port", authority.as_str()),
        )
    })?;
    if target.port() == 0 {
        return Err((StatusCode::BAD_REQUEST, "port 0".to_string()));
    }
    let h = req.headers();
    Ok(ConnectTarget {
        target,
        client: h.get("forwarded").and_then(headers::parse_forwarded_for),
        baggage: h.get("baggage").cloned(),
        traceparent: h.get("traceparent").cloned(),
        original_principal: h
            .get(headers::ORIGINAL_PRINCIPAL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    })
}

/// Answers a CONNECT. A 200 keeps the stream open for data and returns its send half; any other
/// status ends the stream.
pub fn respond(
    mut respond: SendResponse<Bytes>,
    status: StatusCode,
) -> Result<Option<SendStream<Bytes>>, h2::Error> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    let ok = status == StatusCode::OK;
    let stream = respond.send_response(resp, !ok)?;
    Ok(ok.then_some(stream))
}

/// Serves one HBONE connection until the peer closes it, it fails, or `shutdown` fires (then
/// GOAWAY lets open streams finish). Each request is handed to `handle` in its own task on
/// `tracker`, so a drain can wait for them.
pub async fn serve<IO, F, Fut>(
    io: IO,
    settings: &Settings,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
    handle: F,
) -> Result<(), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<RecvStream>, SendResponse<Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_concurrent_streams(settings.max_streams)
        .handshake::<_, Bytes>(io);
    // A peer that finished TLS but never sends the HTTP/2 preface must not pin the task.
    let mut conn = tokio::select! {
        r = tokio::time::timeout(settings.connect_timeout, handshake) => match r {
            Ok(conn) => conn?,
            Err(_) => return Err(h2::Error::from(h2::Reason::SETTINGS_TIMEOUT)),
        },
        _ = shutdown.cancelled() => return Ok(()),
    };
    let ping = conn.ping_pong();
    let (interval, timeout) = (settings.keepalive_interval, settings.keepalive_timeout);
    let keepalive = async move {
        let Some(mut ping) = ping else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(interval).await;
            match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break e,
                Err(_) => break h2::Error::from(h2::Reason::NO_ERROR),
            }
        }
    };
    tokio::pin!(keepalive);
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, resp))) => {
                    tracker.spawn(handle(req, resp));
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            e = &mut keepalive => {
                tracing::warn!("HBONE client stopped answering PING; closing its connection");
                return Err(e);
            }
        }
    }
}
