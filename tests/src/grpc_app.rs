//! A gRPC application standing in for a service version (`proto/echo.proto`, package
//! `weft.test.echo`): a real tonic server on plain TCP (h2c) and a tonic client over a stream
//! the test has already set up (through a node's outbound listener, [`crate::connect_via`]).
//!
//! - `Say`: one reply with the server's name and the request metadata it saw.
//! - `Count(n)`: `n` replies in order, then status OK (in trailers).
//! - `Fail`: the status code the request names, with its message.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Code, Request, Response, Status};

/// The code generated from `proto/echo.proto`.
pub mod proto {
    tonic::include_proto!("weft.test.echo");
}

use proto::echo_client::EchoClient;
use proto::echo_server::{Echo, EchoServer};
use proto::{CountReply, CountRequest, SayReply, SayRequest};

/// A running Echo server; stopped when dropped.
pub struct GrpcApp {
    pub addr: SocketAddr,
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcApp {
    /// How many calls of `method` (`"Say"`, `"Count"`, `"Fail"`) the server has received.
    pub fn calls(&self, method: &str) -> usize {
        self.calls.lock().unwrap().get(method).copied().unwrap_or(0)
    }

    /// How many connections the server has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Serves Echo on `addr` as `name` (the `server` field of every reply).
pub async fn grpc_app(addr: SocketAddr, name: &'static str) -> anyhow::Result<GrpcApp> {
    // Bound here, so an address in use is this call's error and not a task's.
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    let incoming = TcpIncoming::bind(addr)?
        .with_nodelay(Some(true))
        .map(move |c| {
            if c.is_ok() {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            c
        });
    let calls = Arc::new(Mutex::new(HashMap::new()));
    let svc = EchoServer::new(EchoApp {
        name,
        calls: calls.clone(),
    });
    let task = tokio::spawn(async move {
        if let Err(e) = Server::builder().serve_with_incoming(svc, incoming).await {
            eprintln!("grpc_app {name} on {addr}: {e}");
        }
    });
    Ok(GrpcApp {
        addr,
        calls,
        connections,
        task,
    })
}

/// A tonic client over `tcp`, a stream already connected (e.g. by [`crate::connect_via`]),
/// speaking HTTP/2 with `:authority` `authority` (e.g. `echo.default.svc.cluster.local:50051`).
/// The channel cannot reconnect: once this stream is gone, calls fail.
pub async fn grpc_client(tcp: TcpStream, authority: &str) -> anyhow::Result<EchoClient<Channel>> {
    let uri: Uri = format!("http://{authority}").parse()?;
    let once = Arc::new(Mutex::new(Some(tcp)));
    let connector = tower::service_fn(move |_: Uri| {
        let tcp = once.lock().unwrap().take();
        async move {
            tcp.map(TokioIo::new).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the client's one connection is already used",
                )
            })
        }
    });
    let channel = Endpoint::from(uri)
        .connect_with_connector(connector)
        .await?;
    Ok(EchoClient::new(channel))
}

struct EchoApp {
    name: &'static str,
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
}

impl EchoApp {
    fn count(&self, method: &'static str) {
        *self.calls.lock().unwrap().entry(method).or_default() += 1;
    }
}

/// The request metadata a reply reports: what the tests check the mesh adds or keeps.
fn seen_headers(metadata: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    let headers = metadata.clone().into_headers();
    let mut seen = BTreeMap::new();
    for (k, v) in &headers {
        let k = k.as_str();
        if k.starts_with("x-") || matches!(k, "traceparent" | "tracestate" | "te") {
            seen.insert(
                k.to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            );
        }
    }
    seen.into_iter().collect()
}

type CountStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<CountReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoApp {
    async fn say(&self, req: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        self.count("Say");
        let headers = seen_headers(req.metadata());
        Ok(Response::new(SayReply {
            server: self.name.to_owned(),
            message: req.into_inner().message,
            headers,
        }))
    }

    type CountStream = CountStream;

    async fn count(&self, req: Request<CountRequest>) -> Result<Response<CountStream>, Status> {
        EchoApp::count(self, "Count");
        let server = self.name.to_owned();
        let n = req.into_inner().n;
        let replies = (0..n).map(move |index| {
            Ok(CountReply {
                server: server.clone(),
                index,
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn fail(&self, req: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        self.count("Fail");
        let req = req.into_inner();
        let code = match Code::from(req.code) {
            Code::Ok => Code::Unknown,
            c => c,
        };
        Err(Status::new(code, req.message))
    }
}
