//! HTTP connections to endpoints, kept for reuse: HTTP/2 connections are shared by every
//! request for the same key (multiplexed), HTTP/1.1 connections are reused one request at a
//! time once their previous response has ended.
//!
//! A key is (endpoint address, its node, its identity, protocol, the original client's
//! identity): a connection opened on behalf of one client never carries another's requests,
//! because the destination node authorizes each tunnel by the client it names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use weft_core::identity::SpiffeId;

use super::body::Body;
use crate::Waypoint;
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

#[derive(Default)]
pub struct Clients {
    h1: Mutex<HashMap<Key, Vec<http1::SendRequest<Body>>>>,
    h2: Mutex<HashMap<Key, http2::SendRequest<Body>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the endpoint (nothing was sent).
    #[error("connecting to the upstream: {0}")]
    Connect(String),
    #[error("the upstream failed: {0}")]
    Http(#[from] hyper::Error),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An endpoint, and the original client as the destination should see it.
pub struct Target {
    pub chosen: Chosen,
    pub client: SocketAddr,
    pub identity: SpiffeId,
}

impl Clients {
    pub async fn send(
        &self,
        wp: &Waypoint,
        t: Arc<Target>,
        proto: Proto,
        req: Request<Body>,
        dedicated: bool,
    ) -> Result<Response<Incoming>, SendError> {
        let key = Key {
            address: t.chosen.address,
            hbone: t.chosen.hbone,
            identity: t.chosen.workload.identity.clone(),
            proto,
            client: t.identity.clone(),
            client_ip: t.client.ip(),
        };
        match proto {
            Proto::Http2 => {
                let pooled = lock(&self.h2).get(&key).filter(|s| !s.is_closed()).cloned();
                let (mut s, mut fresh) = match pooled {
                    Some(s) => (s, false),
                    None => (self.dial_h2(wp, &t, &key).await?, true),
                };
                let mut req = req;
                // A shared connection going away (the endpoint's GOAWAY on shutdown) hands
                // back a request it had not started: it goes once more, on a new connection.
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
                    s = self.dial_h2(wp, &t, &key).await?;
                    fresh = true;
                }
            }
            Proto::Http1 if dedicated => {
                // An upgrade takes its connection for good.
                let mut s = dial_h1(wp, t.clone()).await?;
                Ok(s.send_request(req).await?)
            }
            Proto::Http1 => {
                let idle = {
                    let mut m = lock(&self.h1);
                    let list = m.entry(key.clone()).or_default();
                    list.retain(|s| !s.is_closed());
                    list.iter()
                        .position(|s| s.is_ready())
                        .map(|i| list.swap_remove(i))
                };
                let (mut s, mut req) = match idle {
                    Some(s) => (s, req),
                    None => (dial_h1(wp, t.clone()).await?, req),
                };
                // A connection the endpoint closed before taking the request hands it back
                // unsent: it goes again once, on a new connection. A new one that does the
                // same is an endpoint that will not serve (a connect failure, for retries).
                for fresh in [false, true] {
                    let sent = s.try_send_request(req);
                    self.keep_h1(&key, s);
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
                                tracing::debug!(
                                    "kept HTTP/1.1 connection was closed: {}",
                                    e.error()
                                );
                                req = back;
                                s = dial_h1(wp, t.clone()).await?;
                            }
                            None => return Err(SendError::Http(e.into_error())),
                        },
                    }
                }
                Err(SendError::Connect("no connection took the request".into()))
            }
        }
    }

    async fn dial_h2(
        &self,
        wp: &Waypoint,
        t: &Arc<Target>,
        key: &Key,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let s = dial_h2(wp, t.clone()).await?;
        lock(&self.h2).insert(key.clone(), s.clone());
        Ok(s)
    }

    fn keep_h1(&self, key: &Key, s: http1::SendRequest<Body>) {
        let mut m = lock(&self.h1);
        let list = m.entry(key.clone()).or_default();
        if list.len() < MAX_H1_PER_KEY {
            list.push(s);
        }
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

async fn dial_h1(wp: &Waypoint, t: Arc<Target>) -> Result<http1::SendRequest<Body>, SendError> {
    let io = open(wp, t).await?;
    let (send, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream HTTP/1.1 connection ended: {e}");
        }
    });
    Ok(send)
}

async fn dial_h2(wp: &Waypoint, t: Arc<Target>) -> Result<http2::SendRequest<Body>, SendError> {
    let io = open(wp, t).await?;
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(send)
}
