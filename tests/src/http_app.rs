//! An HTTP application standing in for a service version: answers HTTP/1.1 and HTTP/2 (prior
//! knowledge) with what it saw, as JSON, and misbehaves on request:
//!
//! - `/fail/once/<key>`: 503 the first time a key is seen, 200 after.
//! - `/fail/always`: always 503.
//! - `/sleep/<ms>`: answers after that long.
//! - `/upgrade` with `upgrade: websocket`: 101, then echoes the upgraded bytes (a WebSocket stand-in).
//! - anything else: 200.
//!
//! [`HttpApp::set_failing`] and [`HttpApp::set_delay`] make every answer a 503, or slow.
//!
//! The body is `{"server", "method", "path", "version", "headers", "body_bytes"}`.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the app saw, for the test to check.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    failed_once: HashSet<String>,
    seen: Vec<Seen>,
    failing: bool,
    delay: Duration,
}

pub struct HttpApp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Connections accepted, and open now.
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpApp {
    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// (connections accepted so far, connections open now).
    pub fn connections(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.open.load(Ordering::SeqCst),
        )
    }

    /// From now on every request is answered 503 (or again normally).
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    /// From now on every answer waits this long first.
    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    pub fn count(&self, path_prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.starts_with(path_prefix))
            .count()
    }
}

pub async fn http_app(addr: SocketAddr, name: &'static str) -> anyhow::Result<HttpApp> {
    let l = TcpListener::bind(addr).await?;
    let state = Arc::new(Mutex::new(State::default()));
    let st = state.clone();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (acc, op) = (accepted.clone(), open.clone());
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let st = st.clone();
            acc.fetch_add(1, Ordering::SeqCst);
            op.fetch_add(1, Ordering::SeqCst);
            let op = op.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(name, st.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
                op.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(HttpApp {
        addr,
        state,
        accepted,
        open,
        task,
    })
}

async fn answer(
    name: &'static str,
    state: Arc<Mutex<State>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/upgrade"
        && req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v == "websocket")
    {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::default());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return Ok(resp);
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, delay) = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        });
        let status = if s.failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else if let Some(key) = path.strip_prefix("/fail/once/") {
            if s.failed_once.insert(key.to_owned()) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        } else if path.starts_with("/fail/always") {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (status, s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let out = json!({
        "server": name, "method": method, "path": path, "version": version,
        "headers": headers, "body_bytes": body.len(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

/// An answer as a test reads it: status, headers, and the body as text and as JSON (`Null`
/// when it is not).
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

impl Answer {
    /// Which app answered (the body's `server`; empty for an answer the app did not make).
    pub fn server(&self) -> &str {
        self.json["server"].as_str().unwrap_or("")
    }
}

pub async fn read(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    }
}

/// Sends `req` on a kept HTTP/1.1 client connection and reads the whole answer (10 s at most).
pub async fn send(
    c: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    c.ready().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), c.send_request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    read(r).await
}
