//! Circuit breaking towards one backend Service: requests in flight (`maxRequests`), HTTP/1.1
//! connections busy (`maxConnections`; such a connection carries one request at a time) and
//! requests waiting for one, or for an HTTP/2 connection being opened (`maxPendingRequests`).
//! Counters are kept across mesh versions; limits are the version's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Circuit {
    requests: AtomicU32,
    busy: AtomicU32,
    pending: AtomicU32,
    freed: Notify,
    /// Upstream connections open to the Service's endpoints.
    connections: AtomicU32,
}

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error("maxRequests ({0}) reached")]
    Requests(u32),
    #[error("maxConnections ({0}) reached")]
    Connections(u32),
    #[error("maxPendingRequests ({0}) reached")]
    Pending(u32),
}

/// One of `counter` until dropped.
pub struct Held {
    circuit: Arc<Circuit>,
    which: fn(&Circuit) -> &AtomicU32,
    notify: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.which)(&self.circuit).fetch_sub(1, Ordering::AcqRel);
        if self.notify {
            self.circuit.freed.notify_one();
        }
    }
}

fn try_inc(c: &AtomicU32, max: Option<u32>) -> bool {
    c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match max {
        Some(m) if n >= m => None,
        _ => Some(n + 1),
    })
    .is_ok()
}

impl Circuit {
    fn hold(self: &Arc<Self>, which: fn(&Circuit) -> &AtomicU32, notify: bool) -> Held {
        Held {
            circuit: self.clone(),
            which,
            notify,
        }
    }

    /// A request in flight, or the limit it is over.
    pub fn request(self: &Arc<Self>, max: Option<u32>) -> Result<Held, Overflow> {
        if try_inc(&self.requests, max) {
            Ok(self.hold(|c| &c.requests, false))
        } else {
            Err(Overflow::Requests(max.unwrap_or(0)))
        }
    }

    /// A busy HTTP/1.1 connection: at once when fewer than `max` are, else after waiting
    /// among at most `max_pending` others.
    pub async fn connection(
        self: &Arc<Self>,
        max: u32,
        max_pending: Option<u32>,
    ) -> Result<Held, Overflow> {
        if try_inc(&self.busy, Some(max)) {
            return Ok(self.hold(|c| &c.busy, true));
        }
        // No room to wait is the connection limit's refusal.
        let _waiting = self.pending(max_pending).map_err(|o| match max_pending {
            Some(0) => Overflow::Connections(max),
            _ => o,
        })?;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if try_inc(&self.busy, Some(max)) {
                return Ok(self.hold(|c| &c.busy, true));
            }
            freed.await;
        }
    }

    /// A request waiting for a connection (a busy HTTP/1.1 one to free up, an HTTP/2 one to
    /// open), among at most `max` others.
    pub fn pending(self: &Arc<Self>, max: Option<u32>) -> Result<Held, Overflow> {
        if try_inc(&self.pending, max) {
            Ok(self.hold(|c| &c.pending, false))
        } else {
            Err(Overflow::Pending(max.unwrap_or(0)))
        }
    }

    /// An open upstream connection, counted until dropped.
    pub fn opened(self: &Arc<Self>) -> Held {
        self.connections.fetch_add(1, Ordering::AcqRel);
        self.hold(|c| &c.connections, false)
    }

    pub fn open_connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }

    /// (requests in flight, busy connections, pending requests), for `/config_dump`.
    pub fn counts(&self) -> (u32, u32, u32) {
        (
            self.requests.load(Ordering::Relaxed),
            self.busy.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn over_the_limits_fails_fast_and_a_freed_connection_is_handed_on() {
        let c = Arc::new(Circuit::default());
        let r1 = c.request(Some(1)).unwrap();
        assert_eq!(c.request(Some(1)).err(), Some(Overflow::Requests(1)));
        drop(r1);
        assert!(c.request(Some(1)).is_ok());

        let busy = c.connection(1, Some(1)).await.unwrap();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.connection(1, Some(1)).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            c.connection(1, Some(1)).await.err(),
            Some(Overflow::Pending(1)),
            "one waits; a second may not"
        );
        drop(busy);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(1), waiter)
                .await
                .unwrap()
                .unwrap(),
            Ok(())
        );
        assert_eq!(c.counts(), (0, 0, 0));
        assert_eq!(
            c.connection(1, None).await.map(|_| ()),
            Ok(()),
            "free again"
        );
    }

    #[test]
    fn requests_waiting_for_a_new_connection_are_bounded() {
        let c = Arc::new(Circuit::default());
        let first = c.pending(Some(1)).unwrap();
        assert_eq!(c.pending(Some(1)).err(), Some(Overflow::Pending(1)));
        assert_eq!(c.counts(), (0, 0, 1));
        drop(first);
        assert!(c.pending(Some(1)).is_ok(), "counted until dropped");
        assert_eq!(c.pending(Some(0)).err(), Some(Overflow::Pending(0)));
        assert!(c.pending(None).is_ok(), "no limit");
    }
}
