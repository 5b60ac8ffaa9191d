//! Accepting connections the way every listener in weft does: until told to stop, riding out
//! accept errors (out of file descriptors, a connection aborted before it was taken) with a
//! short pause, instead of spinning on them or giving the port up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed accept: long enough not to spin while descriptors are
/// exhausted, short enough that a freed one is used soon.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection, or `None` once `stop` has fired.
pub async fn next(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            a = listener.accept() => match a {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!("accept on {:?}: {e}", listener.local_addr().ok());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}
