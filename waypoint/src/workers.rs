//! The data plane's threads: one per core, each a single-threaded tokio runtime with its own
//! HBONE listening socket (`SO_REUSEPORT`: the kernel spreads connections over them).
//!
//! Why not one work-stealing runtime: a request crosses six or more tasks in the waypoint
//! (the HBONE connection, the HTTP connection inside its CONNECT stream, the request, the
//! upstream connection, and back). On a work-stealing runtime each of those wakeups may hand
//! the task to the other core, with a futex wake and cold caches on the way; under the
//! benchmark's load that hand-off cost more than the work itself (docs/architecture.md,
//! "The waypoint's threads"). Here every task of a connection stays on the thread that
//! accepted it, as in Envoy's workers: a wakeup is a push onto a local queue.
//!
//! The control plane (mesh updates, certificates, admin, metrics) stays on the runtime that
//! `main` runs; shared state (`Waypoint`) is `Sync` and read from every worker.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Waypoint, inbound};

/// Connections waiting to be accepted, per worker.
const BACKLOG: i32 = 1024;

/// The running workers.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Fired once the drain is over: the workers stop driving their connections' tasks.
    exit: CancellationToken,
}

/// The number of workers when none is configured: one per core the process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds `count` listening sockets on `addr` (all of them before any thread starts, so that a
/// port in use is an error at start) and starts a worker on each. They accept until
/// `shutdown`, then keep serving what they hold until [`Workers::stop`].
pub fn start(
    wp: Arc<Waypoint>,
    addr: SocketAddr,
    count: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<Workers> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket =
            listening_socket(addr).with_context(|| format!("binding the HBONE port {addr}"))?;
        // Port 0: the first socket picks the port, the others share it.
        if addr.port() == 0 {
            addr = socket.local_addr()?;
        }
        sockets.push(socket);
    }
    let exit = CancellationToken::new();
    let mut threads = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a worker's runtime")?;
        let (wp, stop, exit) = (wp.clone(), shutdown.clone(), exit.clone());
        let thread = std::thread::Builder::new()
            .name(format!("weft-worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept(wp, listener, stop).await,
                        Err(e) => tracing::error!("worker {i}: the HBONE socket: {e}"),
                    }
                    // Connections accepted here are driven by this runtime: it keeps running
                    // through the drain.
                    exit.cancelled().await;
                });
            })
            .context("starting a worker thread")?;
        threads.push(thread);
    }
    Ok(Workers { threads, exit })
}

impl Workers {
    /// Stops the workers once the drain is over, and waits for their threads.
    pub fn stop(self) {
        self.exit.cancel();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn listening_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

async fn accept(wp: Arc<Waypoint>, listener: TcpListener, stop: CancellationToken) {
    while let Some((tcp, peer)) = weft_core::listener::next(&listener, &stop).await {
        let _ = tcp.set_nodelay(true);
        wp.tracker.spawn(inbound::handle_connection(
            wp.clone(),
            tcp,
            peer,
            stop.clone(),
        ));
    }
}
