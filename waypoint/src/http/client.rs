//! HTTP connections to endpoints, kept for reuse: HTTP/2 connections are shared by every
//! request for the same key (multiplexed), HTTP/1.1 connections are reused one request at a
//! time once their previous response has ended.
//!
//! A key is (endpoint address, its node, its identity, protocol, the original client's
//! identity): a connection opened on behalf of one client never carries another's requests,
//! because the destination node authorizes each tunnel by the client it names.
//!
//! The backend Service's `connectionPool` applies here: `maxConnections` (HTTP/1.1: busy
//! connections, upgrades among them, with `maxPendingRequests` waiting for one; HTTP/2:
//! connections opened, with `maxPendingRequests` waiting for one being opened),
//! `maxRequestsPerConnection` and `idleTimeout` (also enforced by [`Clients::sweep`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use weft_core::identity::SpiffeId;

use super::body::Body;
use crate::Waypoint;
use crate::traffic::PoolSettings;
use crate::traffic::circuit::{Circuit, Held, Overflow};
use crate::upstream::{self, Chosen, Upstream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    address: SocketAddr,
    hbone: Option<SocketAddr>,
    identity: SpiffeId,
    proto: Proto,
    client: SpiffeId,
    /// The CONNECT under the connection names the client's address too, which the destination
    /// uses for policy (`ipBlocks`): replicas sharing an identity must not share it.
    client_ip: std::net::IpAddr,
}

/// HTTP/1.1 connections kept per key, busy or idle; beyond this a connection serves its one
/// request and closes.
const MAX_H1_PER_KEY: usize = 64;

/// A kept connection and what its pool settings need.
struct Kept<S> {
    send: S,
    used: u32,
    last_used: Instant,
    idle_timeout: Duration,
}

impl<S> Kept<S> {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) > self.idle_timeout
    }
}

impl Kept<http1::SendRequest<Body>> {
    /// Closed, or idle past its timeout (a busy one is never cut).
    fn stale(&self, now: Instant) -> bool {
        self.send.is_closed() || (self.send.is_ready() && self.expired(now))
    }
}

impl Kept<http2::SendRequest<Body>> {
    /// Closed, or unused past its timeout.
    fn stale(&self, now: Instant) -> bool {
        self.send.is_closed() || self.expired(now)
    }
}

#[derive(Default)]
pub struct Clients {
    h1: Mutex<HashMap<Key, Vec<Kept<http1::SendRequest<Body>>>>>,
    h2: Mutex<HashMap<Key, Kept<http2::SendRequest<Body>>>>,
    /// HTTP/2 connections being opened: requests for the same key wait for that one instead
    /// of each opening its own (`H2Dial`).
    h2_dials: Mutex<HashMap<Key, watch::Receiver<Dialed>>>,
}

/// What joining a key's HTTP/2 dial came to.
enum Joined {
    /// This request opened the connection.
    Dialed(http2::SendRequest<Body>),
    /// The dial this request waited for succeeded: its connection is in the pool, unused.
    Waited,
    /// Nothing came of it for this request (the pool has a connection, or the dial ran into
    /// a limit or went away): look again.
    Again,
}

/// How an HTTP/2 dial ended, for the requests that waited for it (`None` while it runs).
type Dialed = Option<Result<(), Failed>>;

/// A dial's failure, as its waiters see it: a limit the dialing request ran into (its
/// Service's, not necessarily theirs), or a connect failure they all report.
#[derive(Debug, Clone)]
enum Failed {
    Overflow,
    Connect(String),
}

impl From<&SendError> for Failed {
    fn from(e: &SendError) -> Self {
        match e {
            SendError::Overflow(_) => Failed::Overflow,
            SendError::Connect(m) => Failed::Connect(m.clone()),
            SendError::Http(e) => Failed::Connect(e.to_string()),
        }
    }
}

/// One HTTP/2 dial in progress for `key`. However the dialing request ends (answered, or
/// dropped half-way by its client), the key is freed for the next dial; waiters see the
/// outcome, or a closed channel when there was none.
struct H2Dial<'a> {
    dials: &'a Mutex<HashMap<Key, watch::Receiver<Dialed>>>,
    key: &'a Key,
    tx: watch::Sender<Dialed>,
}

impl H2Dial<'_> {
    fn forget(&self) {
        let mut m = lock(self.dials);
        // Only this dial's entry: a later one for the same key may already be in its place.
        if m.get(self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            m.remove(self.key);
        }
    }

    /// Frees the key first, so that a waiter woken by the outcome never finds this dial again.
    fn finish(self, outcome: Result<(), Failed>) {
        self.forget();
        let _ = self.tx.send(Some(outcome));
    }
}

impl Drop for H2Dial<'_> {
    fn drop(&mut self) {
        self.forget();
    }
}

/// A response, and the busy-connection slot it holds until its body ends.
pub struct Sent {
    pub response: Response<Incoming>,
    pub slot: Option<Held>,
}

/// The backend Service's pool settings and circuit, when it has them.
pub type PoolOf<'a> = Option<(&'a PoolSettings, &'a Arc<Circuit>)>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the endpoint (nothing was sent).
    #[error("connecting to the upstream: {0}")]
    Connect(String),
    #[error("the upstream failed: {0}")]
    Http(#[from] hyper::Error),
    /// A `connectionPool` limit (nothing was sent).
    #[error("{0}")]
    Overflow(Overflow),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An endpoint, and the original client as the destination should see it.
pub struct Target {
    pub chosen: Chosen,
    pub client: SocketAddr,
    pub identity: SpiffeId,
}

/// One request's way to its endpoint: the target and the backend Service's pool settings
/// and circuit, which every dial and keep decision reads.
struct Dial<'a> {
    wp: &'a Waypoint,
    t: &'a Arc<Target>,
    settings: &'a PoolSettings,
    circuit: Option<&'a Arc<Circuit>>,
}

impl Dial<'_> {
    /// Fails when `maxConnections` allows no new HTTP/2 connection (busy HTTP/1.1
    /// connections, upgrades among them, are counted by their slots).
    fn may_open(&self) -> Result<(), SendError> {
        match (self.settings.max_connections, self.circuit) {
            (Some(max), Some(c)) if c.open_connections() >= max => {
                Err(SendError::Overflow(Overflow::Connections(max)))
            }
            _ => Ok(()),
        }
    }

    /// A busy-connection slot under `maxConnections`, waiting among `maxPendingRequests`.
    async fn slot(&self) -> Result<Option<Held>, SendError> {
        match (self.settings.max_connections, self.circuit) {
            (Some(max), Some(c)) => c
                .connection(max, self.settings.max_pending_requests)
                .await
                .map(Some)
                .map_err(SendError::Overflow),
            _ => Ok(None),
        }
    }

    async fn h1(&self) -> Result<Kept<http1::SendRequest<Body>>, SendError> {
        Ok(Kept {
            send: dial_h1(self.wp, self.t.clone(), self.circuit).await?,
            used: 0,
            last_used: Instant::now(),
            idle_timeout: self.settings.idle_timeout,
        })
    }
}

impl Clients {
    pub async fn send(
        &self,
        wp: &Waypoint,
        t: Arc<Target>,
        proto: Proto,
        req: Request<Body>,
        dedicated: bool,
        pool: PoolOf<'_>,
    ) -> Result<Sent, SendError> {
        let default = PoolSettings::default();
        let d = Dial {
            wp,
            t: &t,
            settings: pool.map_or(&default, |(s, _)| s),
            circuit: pool.map(|(_, c)| c),
        };
        let key = Key {
            address: t.chosen.address,
            hbone: t.chosen.hbone,
            identity: t.chosen.workload.identity.clone(),
            proto,
            client: t.identity.clone(),
            client_ip: t.client.ip(),
        };
        if proto == Proto::Http2 {
            let response = self.send_h2(&d, key, req).await?;
            return Ok(Sent {
                response,
                slot: None,
            });
        }
        let slot = d.slot().await?;
        let response = if dedicated {
            // An upgrade takes its connection for good.
            d.h1().await?.send.send_request(req).await?
        } else {
            self.send_h1(&d, key, req).await?
        };
        Ok(Sent { response, slot })
    }

    async fn send_h2(
        &self,
        d: &Dial<'_>,
        key: Key,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        // Another request's dial may fill the pool meanwhile: then take it from there, as new
        // when this request waited for it (it has not served anything yet).
        let mut waited = false;
        let (mut s, mut fresh) = loop {
            if let Some(s) = self.pooled_h2(d, &key) {
                break (s, waited);
            }
            match self.join_h2_dial(d, &key).await? {
                Joined::Dialed(s) => break (s, true),
                Joined::Waited => waited = true,
                Joined::Again => waited = false,
            }
        };
        let mut req = req;
        // A shared connection going away (the endpoint's GOAWAY on shutdown) hands back a
        // request it had not started: it goes once more, on a new connection.
        loop {
            let refused = match s.ready().await {
                Ok(()) => match s.try_send_request(req).await {
                    Ok(r) => return Ok(r),
                    Err(mut e) => match e.take_message() {
                        Some(back) => (back, e.into_error()),
                        None => return Err(SendError::Http(e.into_error())),
                    },
                },
                Err(e) => (req, e),
            };
            let (back, error) = refused;
            if fresh {
                return Err(SendError::Connect(format!(
                    "a new HTTP/2 connection would not take the request: {error}"
                )));
            }
            tracing::debug!("kept HTTP/2 connection went away: {error}");
            req = back;
            s = self.dial_h2(d, &key).await?;
            fresh = true;
        }
    }

    async fn send_h1(
        &self,
        d: &Dial<'_>,
        key: Key,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let idle = {
            let now = Instant::now();
            let mut m = lock(&self.h1);
            let list = m.entry(key.clone()).or_default();
            list.retain(|k| !k.stale(now));
            list.iter()
                .position(|k| k.send.is_ready())
                .map(|i| list.swap_remove(i))
        };
        let (mut s, mut req) = match idle {
            Some(k) => (k, req),
            None => (d.h1().await?, req),
        };
        // A connection the endpoint closed before taking the request hands it back unsent:
        // it goes again once, on a new connection. A new one that does the same is an
        // endpoint that will not serve (a connect failure, for retries).
        for fresh in [false, true] {
            let sent = s.send.try_send_request(req);
            s.used += 1;
            s.last_used = Instant::now();
            self.keep_h1(d, &key, s);
            match sent.await {
                Ok(r) => return Ok(r),
                Err(mut e) => match e.take_message() {
                    Some(_) if fresh => {
                        return Err(SendError::Connect(format!(
                            "the endpoint closed a new connection unused: {}",
                            e.error()
                        )));
                    }
                    Some(back) => {
                        tracing::debug!("kept HTTP/1.1 connection was closed: {}", e.error());
                        req = back;
                        s = d.h1().await?;
                    }
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        Err(SendError::Connect("no connection took the request".into()))
    }

    /// The key's kept HTTP/2 connection, counting this request against it.
    fn pooled_h2(&self, d: &Dial<'_>, key: &Key) -> Option<http2::SendRequest<Body>> {
        let now = Instant::now();
        let mut m = lock(&self.h2);
        let k = m.get_mut(key)?;
        if k.stale(now) {
            m.remove(key);
            return None;
        }
        k.used += 1;
        k.last_used = now;
        let s = k.send.clone();
        // Its last request: later ones open a new connection.
        if d.settings
            .max_requests_per_connection
            .is_some_and(|max| k.used >= max)
        {
            m.remove(key);
        }
        Some(s)
    }

    /// Opens the key's HTTP/2 connection, or waits for the dial another request has under
    /// way: a burst of first requests must not open a connection each (over `maxConnections`,
    /// and a tunnel handshake apiece). Waiting is what Envoy calls a pending request:
    /// `maxPendingRequests` bounds it (503 UO beyond). A failed dial fails its waiters too,
    /// except an overflow: the waiter may belong to another Service, with its own limits.
    async fn join_h2_dial(&self, d: &Dial<'_>, key: &Key) -> Result<Joined, SendError> {
        // A connection that takes a bounded share of requests cannot carry a whole burst:
        // those are opened side by side, each request its own.
        if d.settings.max_requests_per_connection.is_some() {
            return self.dial_h2(d, key).await.map(Joined::Dialed);
        }
        enum Role {
            Dial(watch::Sender<Dialed>),
            Wait(watch::Receiver<Dialed>),
            Pooled,
        }
        let role = {
            let mut m = lock(&self.h2_dials);
            match m.get(key) {
                Some(rx) => Role::Wait(rx.clone()),
                // Another worker's dial may have pooled its connection and left since this
                // request looked: the dialer pools before it leaves, so look under this lock.
                None if lock(&self.h2)
                    .get(key)
                    .is_some_and(|k| !k.stale(Instant::now())) =>
                {
                    Role::Pooled
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    m.insert(key.clone(), rx);
                    Role::Dial(tx)
                }
            }
        };
        let mut rx = match role {
            Role::Dial(tx) => {
                let dial = H2Dial {
                    dials: &self.h2_dials,
                    key,
                    tx,
                };
                let dialed = self.dial_h2(d, key).await;
                dial.finish(dialed.as_ref().map(|_| ()).map_err(Failed::from));
                return dialed.map(Joined::Dialed);
            }
            Role::Wait(rx) => rx,
            Role::Pooled => return Ok(Joined::Again),
        };
        let _pending = match d.circuit {
            Some(c) => Some(
                c.pending(d.settings.max_pending_requests)
                    .map_err(SendError::Overflow)?,
            ),
            None => None,
        };
        let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        match outcome {
            Ok(Some(Ok(()))) => Ok(Joined::Waited),
            Ok(Some(Err(Failed::Connect(e)))) => Err(SendError::Connect(e)),
            // The dial ran into a limit (perhaps another Service's), or its request went away
            // before it ended: look again.
            _ => Ok(Joined::Again),
        }
    }

    async fn dial_h2(
        &self,
        d: &Dial<'_>,
        key: &Key,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        d.may_open()?;
        let s = dial_h2(d.wp, d.t.clone(), d.circuit).await?;
        let first_is_last = d.settings.max_requests_per_connection == Some(1);
        if !first_is_last {
            lock(&self.h2).insert(
                key.clone(),
                Kept {
                    send: s.clone(),
                    used: 1,
                    last_used: Instant::now(),
                    idle_timeout: d.settings.idle_timeout,
                },
            );
        }
        Ok(s)
    }

    /// Keeps a connection for later requests, unless it has served its share or the Service
    /// has more open than `maxConnections` (it then closes once its response has ended).
    fn keep_h1(&self, d: &Dial<'_>, key: &Key, s: Kept<http1::SendRequest<Body>>) {
        if d.settings
            .max_requests_per_connection
            .is_some_and(|max| s.used >= max)
        {
            return;
        }
        if let (Some(max), Some(c)) = (d.settings.max_connections, d.circuit)
            && c.open_connections() > max
        {
            return;
        }
        let mut m = lock(&self.h1);
        let list = m.entry(key.clone()).or_default();
        if list.len() < MAX_H1_PER_KEY {
            list.push(s);
        }
    }

    /// Closes kept connections idle for longer than their `idleTimeout` (run periodically,
    /// so that an idle pool does not hold tunnels open for good).
    pub fn sweep(&self) {
        let now = Instant::now();
        {
            let mut m = lock(&self.h1);
            for list in m.values_mut() {
                list.retain(|k| !k.stale(now));
            }
            m.retain(|_, list| !list.is_empty());
        }
        lock(&self.h2).retain(|_, k| !k.stale(now));
    }

    /// Connections kept, for `/config_dump` and tests.
    pub fn counts(&self) -> (usize, usize) {
        let h1 = lock(&self.h1).values().map(Vec::len).sum();
        let h2 = lock(&self.h2).len();
        (h1, h2)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn open(wp: &Waypoint, t: Arc<Target>) -> Result<Box<dyn Io>, SendError> {
    match upstream::open(wp, &t.chosen, t.client, Some(&t.identity), None).await {
        Ok(Upstream::Hbone(s)) => Ok(Box::new(s.into_io())),
        Ok(Upstream::Tcp(t)) => Ok(Box::new(t)),
        Err(e) => Err(SendError::Connect(e.to_string())),
    }
}

async fn dial_h1(
    wp: &Waypoint,
    t: Arc<Target>,
    circuit: Option<&Arc<Circuit>>,
) -> Result<http1::SendRequest<Body>, SendError> {
    let io = open(wp, t).await?;
    let open = circuit.map(|c| c.opened());
    let (send, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _open = open;
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream HTTP/1.1 connection ended: {e}");
        }
    });
    Ok(send)
}

async fn dial_h2(
    wp: &Waypoint,
    t: Arc<Target>,
    circuit: Option<&Arc<Circuit>>,
) -> Result<http2::SendRequest<Body>, SendError> {
    let io = open(wp, t).await?;
    let open = circuit.map(|c| c.opened());
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _open = open;
        if let Err(e) = conn.await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(send)
}
