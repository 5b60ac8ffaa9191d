//! Binding and accepting. The outbound listener is one per node; without transparent capture
//! the HBONE (15008) and plaintext (15006) listeners are bound on each local workload's
//! address, so the address a connection arrives on names its workload, exactly as it does
//! when capture steers pod-addressed traffic to one transparent listener.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use weft_core::model::{CaptureMode, MeshState};

use super::{Proxy, inbound, outbound, plaintext};

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A listener that accepts connections to any address (IP_TRANSPARENT): sk_lookup hands it
/// connections to pod addresses, which are not weftd's own; without IP_TRANSPARENT the
/// SYN-ACK from the pod's address would have no route.
pub fn bind_transparent(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The transparent listeners of eBPF capture. The address a connection was accepted on is the
/// pod's: it names the workload (HBONE) and is the original destination (plaintext).
pub async fn serve_transparent(
    px: Arc<Proxy>,
    hbone: TcpListener,
    plaintext: TcpListener,
    stop: CancellationToken,
) {
    let shutdown = stop.clone();
    let hbone_loop = accept_loop(px.clone(), hbone, stop.clone(), move |px, tcp, peer| {
        inbound::handle_connection(px, tcp, peer, shutdown.clone())
    });
    let plaintext_loop = accept_loop(px, plaintext, stop, |px, tcp, peer| async move {
        match tcp.local_addr() {
            Ok(dst) => plaintext::handle(px, tcp, peer, dst).await,
            Err(e) => tracing::debug!(%peer, "plaintext connection without a local address: {e}"),
        }
    });
    tokio::join!(hbone_loop, plaintext_loop);
}

/// Accepts until `stop` fires, handing each connection to `on_conn` as a tracked task.
pub async fn accept_loop<F, Fut>(
    px: Arc<Proxy>,
    listener: TcpListener,
    stop: CancellationToken,
    on_conn: F,
) where
    F: Fn(Arc<Proxy>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    while let Some((tcp, peer)) = weft_core::listener::next(&listener, &stop).await {
        let _ = tcp.set_nodelay(true);
        px.tracker.spawn(on_conn(px.clone(), tcp, peer));
    }
}

/// The outbound listener: learn the original destination, then proxy.
pub async fn serve_outbound(px: Arc<Proxy>, listener: TcpListener, stop: CancellationToken) {
    accept_loop(px, listener, stop, |px, mut tcp, peer| async move {
        match px.destinations.original_destination(&mut tcp).await {
            Ok(dst) => outbound::handle(px, tcp, peer, dst).await,
            Err(e) => tracing::info!(%peer, "outbound connection without a destination: {e}"),
        }
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Hbone,
    Plaintext,
}

/// The per-workload listeners, reconciled with the mesh state on every change.
pub struct WorkloadListeners {
    px: Arc<Proxy>,
    stop: CancellationToken,
    plaintext_port: u16,
    bound: HashMap<(SocketAddr, Kind), CancellationToken>,
}

impl WorkloadListeners {
    pub fn new(px: Arc<Proxy>, stop: CancellationToken, plaintext_port: u16) -> Self {
        WorkloadListeners {
            px,
            stop,
            plaintext_port,
            bound: HashMap::new(),
        }
    }

    /// Binds what new local workloads need and closes what removed ones had. Connections
    /// already accepted are not touched. Returns how many addresses failed to bind.
    pub fn reconcile(&mut self, state: &MeshState) -> usize {
        let mut wanted = Vec::new();
        // With eBPF capture workload addresses are not local to weftd: inbound arrives through
        // the transparent listeners sk_lookup steers to, not per-workload binds.
        let per_workload = matches!(
            self.px.destinations,
            crate::capture::DestinationSource::ProxyProtocol { .. }
        );
        for w in state
            .local_workloads(&self.px.node)
            .filter(|_| per_workload)
        {
            if w.mode != CaptureMode::Ambient {
                continue;
            }
            for ip in &w.ips {
                wanted.push((SocketAddr::new(*ip, state.hbone_port), Kind::Hbone));
                wanted.push((SocketAddr::new(*ip, self.plaintext_port), Kind::Plaintext));
            }
        }
        self.bound.retain(|key, token| {
            let keep = wanted.contains(key);
            if !keep {
                token.cancel();
            }
            keep
        });
        let mut failed = 0;
        for key in wanted {
            if self.bound.contains_key(&key) {
                continue;
            }
            let (addr, kind) = key;
            let listener = match bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot listen on {addr} ({kind:?}): {e}");
                    failed += 1;
                    continue;
                }
            };
            let token = self.stop.child_token();
            self.bound.insert(key, token.clone());
            let px = self.px.clone();
            let shutdown = self.stop.clone();
            match kind {
                Kind::Hbone => {
                    tokio::spawn(accept_loop(px, listener, token, move |px, tcp, peer| {
                        inbound::handle_connection(px, tcp, peer, shutdown.clone())
                    }));
                }
                Kind::Plaintext => {
                    tokio::spawn(accept_loop(
                        px,
                        listener,
                        token,
                        |px, mut tcp, peer| async move {
                            match px.destinations.original_destination(&mut tcp).await {
                                Ok(dst) => plaintext::handle(px, tcp, peer, dst).await,
                                Err(e) => {
                                    tracing::info!(%peer, "plaintext connection without a destination: {e}")
                                }
                            }
                        },
                    ));
                }
            }
            tracing::debug!("listening on {addr} ({kind:?})");
        }
        failed
    }

    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .bound
            .keys()
            .map(|(a, k)| format!("{a} {k:?}"))
            .collect();
        v.sort();
        v
    }
}
