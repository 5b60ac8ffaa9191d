//! Shares HBONE connections between proxied TCP connections.
//!
//! Connections are keyed by (source identity, destination identity, destination address): a
//! connection authenticated as one workload must never carry another's traffic. Each carries at
//! most `max_streams` streams; callers for a key queue behind one handshake instead of each
//! opening their own, so a burst of N connections opens ceil(N / max_streams) tunnels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio_util::sync::CancellationToken;

use super::client::{ClientTlsProvider, ConnectRequest, establish};
use super::{HboneError, Settings};
use crate::identity::SpiffeId;

/// How a tunnel to an address is dialled: its SO_MARK and source address. With eBPF capture,
/// tunnels to pods on this node carry the capture mark (routing makes them local, sk_lookup
/// hands them to the node's own HBONE listener) and a node source address (so the listener's
/// replies are local too); all others carry weftd's own mark, which is never captured.
pub type MarkFor = Arc<dyn Fn(SocketAddr) -> (Option<u32>, Option<std::net::IpAddr>) + Send + Sync>;

/// No marks: for nodes without capture.
pub fn no_mark() -> MarkFor {
    Arc::new(|_| (None, None))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: SpiffeId,
    pub destination: SpiffeId,
    pub address: SocketAddr,
}

struct Conn {
    send: SendRequest<Bytes>,
    closed: CancellationToken,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

#[derive(Default)]
struct Slot {
    conns: tokio::sync::Mutex<Vec<Arc<Conn>>>,
    /// When and why the last handshake for this key failed. Callers queued behind a failed
    /// handshake fail at once instead of each waiting out its own timeout.
    last_failure: Mutex<Option<(Instant, String)>>,
}

/// How long a failed handshake answers for its key.
const FAIL_FAST: Duration = Duration::from_secs(1);

struct Inner {
    settings: Settings,
    tls: Arc<dyn ClientTlsProvider>,
    mark: MarkFor,
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
    opened: AtomicU64,
}

/// Handle to the pool; clones share it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// An open CONNECT stream. Dropping it gives its slot back to the pooled connection.
pub struct PooledStream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    _lease: Lease,
}

impl PooledStream {
    /// The stream as bytes, holding its slot until the byte stream is dropped.
    pub fn into_io(self) -> super::StreamIo {
        super::StreamIo::new(self.send, self.recv).keeping(Box::new(self._lease))
    }
}

struct Lease(Arc<Conn>);

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut t) = self.0.idle_since.lock()
        {
            *t = Instant::now();
        }
    }
}

impl Pool {
    /// Must be called inside a tokio runtime: it starts the task that closes idle connections.
    pub fn new(settings: Settings, tls: Arc<dyn ClientTlsProvider>, mark: MarkFor) -> Self {
        let inner = Arc::new(Inner {
            settings,
            tls,
            mark,
            slots: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        });
        let every = (inner.settings.idle_timeout / 4).max(Duration::from_millis(250));
        tokio::spawn(reap(Arc::downgrade(&inner), every));
        Pool { inner }
    }

    /// Opens a CONNECT stream to `key.address` and waits for the peer's 200.
    ///
    /// `early` is called once the request is on its way; what it returns is sent as the
    /// stream's first data without waiting for the answer, so a client that speaks first does
    /// not pay a round trip for it. The peer holds that data until it has decided, and drops it
    /// if it refuses.
    pub async fn connect(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
        early: impl FnOnce() -> Option<Bytes>,
    ) -> Result<PooledStream, HboneError> {
        let mut early = Some(early);
        let request = req.to_http()?;
        let authority = req.authority.to_string();
        // A pooled connection can die between checkout and use (GOAWAY, peer restart); one
        // retry on a fresh connection hides that from the application.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.checkout(key).await?;
            let lease = Lease(conn.clone());
            let sent = async {
                let mut send = conn.send.clone().ready().await?;
                let (response, stream) = send.send_request(request.clone(), false)?;
                Ok::<_, h2::Error>((response, stream))
            }
            .await;
            let (response, mut stream) = match sent {
                Ok(v) => v,
                Err(e) if attempt < 2 && (e.is_go_away() || e.is_io() || e.is_library()) => {
                    conn.closed.cancel();
                    continue;
                }
                Err(source) => {
                    return Err(HboneError::H2 {
                        addr: key.address,
                        source,
                    });
                }
            };
            if let Some(data) = early.take().and_then(|f| f()) {
                // Within the fresh stream's window: h2 queues it without reserved capacity.
                stream
                    .send_data(data, false)
                    .map_err(|source| HboneError::H2 {
                        addr: key.address,
                        source,
                    })?;
            }
            let response = tokio::time::timeout(self.inner.settings.connect_timeout, response)
                .await
                .map_err(|_| HboneError::Timeout { addr: key.address })?
                .map_err(|source| HboneError::H2 {
                    addr: key.address,
                    source,
                })?;
            if response.status() != http::StatusCode::OK {
                return Err(HboneError::Status {
                    status: response.status(),
                    authority,
                });
            }
            return Ok(PooledStream {
                send: stream,
                recv: response.into_body(),
                _lease: lease,
            });
        }
    }

    /// Reserves a stream slot on a live connection for `key`, opening one if none has room.
    async fn checkout(&self, key: &PoolKey) -> Result<Arc<Conn>, HboneError> {
        let slot = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            // The key (six strings) is cloned only for the first connection to a destination.
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None => slots.entry(key.clone()).or_default().clone(),
            }
        };
        let addr = key.address;
        let mut conns =
            tokio::time::timeout(self.inner.settings.connect_timeout, slot.conns.lock())
                .await
                .map_err(|_| HboneError::Timeout { addr })?;
        conns.retain(|c| !c.closed.is_cancelled());
        let max = self.inner.settings.max_streams as usize;
        for c in conns.iter() {
            if c.active.load(Ordering::Acquire) < max {
                c.active.fetch_add(1, Ordering::AcqRel);
                return Ok(c.clone());
            }
        }
        let recent = slot
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|(at, _)| at.elapsed() < FAIL_FAST);
        if let Some((at, reason)) = recent {
            return Err(HboneError::RecentFailure {
                addr,
                ago: at.elapsed(),
                reason,
            });
        }
        let opened = async {
            let tls = self
                .inner
                .tls
                .client_config(&key.source, &key.destination)
                .await?;
            let (mark, source) = (self.inner.mark)(addr);
            establish(addr, tls, &self.inner.settings, mark, source).await
        }
        .await;
        let mut failure = slot.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        let est = match opened {
            Ok(est) => {
                *failure = None;
                est
            }
            Err(e) => {
                *failure = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        drop(failure);
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            send: est.send,
            closed: est.closed,
            active: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        conns.push(conn.clone());
        Ok(conn)
    }

    /// Live pooled connections, all keys together.
    pub fn connections(&self) -> usize {
        let slots: Vec<_> = {
            let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.values().cloned().collect()
        };
        slots
            .iter()
            .filter_map(|s| {
                s.conns
                    .try_lock()
                    .ok()
                    .map(|c| c.iter().filter(|c| !c.closed.is_cancelled()).count())
            })
            .sum()
    }

    /// Connections opened since start.
    pub fn opened_total(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }
}

/// Drops connections that have carried no stream for `idle_timeout`; dropping the last handle
/// makes h2 send GOAWAY and close. Stops when the pool is gone.
async fn reap(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let idle = inner.settings.idle_timeout;
        let mut slots = inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, slot| {
            let Ok(mut conns) = slot.conns.try_lock() else {
                return true; // a checkout is in progress
            };
            conns.retain(|c| {
                if c.closed.is_cancelled() {
                    return false;
                }
                let idle_for = c.idle_since.lock().map(|t| t.elapsed()).unwrap_or_default();
                c.active.load(Ordering::Acquire) > 0 || idle_for < idle
            });
            !conns.is_empty()
        });
    }
}
