//! The certificate service's listener: TLS with a serving certificate from the mesh CA itself,
//! renewed at half its lifetime, and gRPC over it.
//!
//! The serving certificate names the controller's SPIFFE id, which weftd checks, and its
//! Service DNS names, which an Istio ztunnel checks. Handshakes run in their own tasks with a
//! deadline, so a client that sends garbage or nothing costs one task for a few seconds and
//! never holds up anyone else.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weft_core::identity::protocol::istio_certificate_service_server::IstioCertificateServiceServer;
use weft_core::identity::{CertificateAuthority, SpiffeId, control_server_config};

use crate::issue::CertificateService;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HANDSHAKES: usize = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const RENEWAL_RETRY: Duration = Duration::from_secs(60);
/// Requests in flight, over all connections: each costs a TokenReview, so this bounds what
/// unauthenticated callers can make the controller ask of the API server.
const MAX_REQUESTS: usize = 256;
const MAX_REQUESTS_PER_CONNECTION: usize = 16;

/// The serving certificate, re-issued when it is past half its life.
pub struct Serving {
    ca: Arc<CertificateAuthority>,
    identity: SpiffeId,
    dns_names: Vec<String>,
    lifetime: Duration,
    current: Mutex<(Arc<ServerConfig>, SystemTime)>,
}

impl Serving {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        identity: SpiffeId,
        dns_names: Vec<String>,
        lifetime: Duration,
    ) -> anyhow::Result<Self> {
        let current = issue(&ca, &identity, &dns_names, lifetime)?;
        Ok(Self {
            ca,
            identity,
            dns_names,
            lifetime,
            current: Mutex::new(current),
        })
    }

    fn config(&self) -> Arc<ServerConfig> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if SystemTime::now() >= current.1 {
            match issue(&self.ca, &self.identity, &self.dns_names, self.lifetime) {
                Ok(next) => {
                    info!(identity = %self.identity, "renewed the serving certificate");
                    *current = next;
                }
                // The old certificate is still valid for another half lifetime; try again in a
                // minute, not on every connection.
                Err(e) => {
                    warn!("renewing the serving certificate failed (kept the old one): {e:#}");
                    current.1 = SystemTime::now() + RENEWAL_RETRY;
                }
            }
        }
        current.0.clone()
    }
}

fn issue(
    ca: &CertificateAuthority,
    identity: &SpiffeId,
    dns_names: &[String],
    lifetime: Duration,
) -> anyhow::Result<(Arc<ServerConfig>, SystemTime)> {
    let cert = ca.issue_serving(identity, dns_names, lifetime)?;
    let half = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default()
        / 2;
    Ok((control_server_config(&cert)?, cert.not_before + half))
}

/// Serves `service` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    serving: Arc<Serving>,
    service: CertificateService,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (tx, mut rx) = mpsc::channel::<TlsStream<TcpStream>>(64);
    tokio::spawn(accept(listener, serving, tx, stop.clone()));
    let incoming = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|s| s.map(Ok::<_, std::io::Error>))
    });
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(MAX_REQUESTS_PER_CONNECTION)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_REQUESTS))
        .add_service(IstioCertificateServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

async fn accept(
    listener: TcpListener,
    serving: Arc<Serving>,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    while let Some((tcp, peer)) = weft_core::listener::next(&listener, &stop).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: dropping the socket closes it
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(serving.config());
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(tls).await;
                }
                Ok(Err(e)) => debug!(%peer, "certificate service TLS handshake failed: {e}"),
                Err(_) => debug!(%peer, "certificate service TLS handshake timed out"),
            }
            drop(slot);
        });
    }
}
