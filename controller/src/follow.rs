//! The loop shared by the writers that keep one object (or one field of many) as a function of
//! what they watch: the waypoints' binding, the routes' status. They write once every watch
//! has listed (an empty first view must not be written: it would strip what is there), then
//! after each burst of changes has settled, and at a resync that repairs what someone edited
//! in the objects they write but do not watch.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A burst of changes (an object and what is made for it) ends in one write.
pub const SETTLE: Duration = Duration::from_millis(300);
pub const RESYNC: Duration = Duration::from_secs(300);
pub const RETRY: Duration = Duration::from_secs(5);

/// Calls `write` as said above until `stop`. `events` are the watches' (errors are logged,
/// the watchers retry with backoff); `ready` resolves once each has listed. A failed write is
/// counted in `errors`, logged as `what: error`, and tried again after `RETRY`.
pub async fn follow<W, F>(
    mut events: BoxStream<'static, Result<(), String>>,
    ready: BoxFuture<'static, ()>,
    stop: CancellationToken,
    errors: Counter,
    what: &str,
    mut write: W,
) where
    W: FnMut() -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut ready = ready;
    let mut listed = false;
    let mut due: Option<Instant> = None;
    loop {
        let wake = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = &mut ready, if !listed => {
                listed = true;
                due = Some(Instant::now());
            }
            event = events.next() => match event {
                None => return,
                Some(Ok(())) => {
                    let soon = Instant::now() + SETTLE;
                    if listed && due.is_none_or(|at| at > soon) {
                        due = Some(soon);
                    }
                }
                Some(Err(e)) => warn!("{e}"),
            },
            _ = wake => {
                due = Some(Instant::now() + match write().await {
                    Ok(()) => RESYNC,
                    Err(e) => {
                        errors.inc();
                        warn!(retry_in = ?RETRY, "{what}: {e}");
                        RETRY
                    }
                });
            }
        }
    }
}
