//! A fake Kubernetes API server over real HTTP on loopback: weft-core's `FakeApi` behind
//! hyper, on a thread and runtime of its own, with a kubeconfig that points at it, so that
//! `weftd run --kubernetes` and `weft-controller` run as real processes against it.
//! Also the controller process itself.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tower::Service;
pub use weft_core::discovery::cluster::fake::FakeApi;

use crate::{controller_bin, http};

/// The fake API server; stops when dropped.
pub struct FakeCluster {
    pub api: FakeApi,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeCluster {
    /// Serves a new fake on `ip` (any free port) and writes `dir/kubeconfig`.
    pub fn start(ip: IpAddr, dir: &Path) -> anyhow::Result<Self> {
        let api = FakeApi::default();
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = api.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let api = served.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| forward(api.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        let mut cluster = Self {
            api,
            addr,
            kubeconfig: PathBuf::new(),
            dir: dir.to_owned(),
            stop: Some(stop),
        };
        cluster.kubeconfig = cluster.kubeconfig_for("test-token")?;
        Ok(cluster)
    }

    /// A kubeconfig for this fake whose requests carry bearer `token`, so that a test can tell
    /// the components' requests apart ([`FakeApi::asked_by`]).
    pub fn kubeconfig_for(&self, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("kubeconfig-{token}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]
users: [{{name: test, user: {{token: {token}}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: test}}}}]
current-context: fake
",
                self.addr
            ),
        )?;
        Ok(path)
    }
}

/// One request to the fake, with the body read in full first (the fake answers whole
/// requests; watches stream only in the response).
async fn forward(
    mut api: FakeApi,
    req: http::Request<hyper::body::Incoming>,
) -> Result<
    http::Response<impl hyper::body::Body<Data = bytes::Bytes, Error = std::io::Error>>,
    std::io::Error,
> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    api.call(http::Request::from_parts(
        parts,
        kube::client::Body::from(body),
    ))
    .await
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A running weft-controller; killed when dropped.
pub struct Controller {
    pub child: Child,
    pub grpc: SocketAddr,
    pub monitoring: SocketAddr,
    pub log: PathBuf,
}

impl Controller {
    /// Starts the controller on `ip` (ports 15012 and 15014) against `cluster`, and waits
    /// until it is ready.
    pub fn start(ip: IpAddr, cluster: &FakeCluster, dir: &Path) -> anyhow::Result<Self> {
        let grpc = SocketAddr::new(ip, 15012);
        let monitoring = SocketAddr::new(ip, 15014);
        let log = dir.join("controller.log");
        let child = Command::new(controller_bin())
            .args(["--listen", &grpc.to_string()])
            .args(["--monitoring", &monitoring.to_string()])
            .args(["--namespace", "weft", "--log", "info"])
            .env("KUBECONFIG", cluster.kubeconfig_for("controller")?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting weft-controller")?;
        let mut c = Self {
            child,
            grpc,
            monitoring,
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = c.child.try_wait()? {
                bail!("weft-controller exited ({status}):\n{}", c.logs());
            }
            if let Ok((200, _)) = http(monitoring, "GET", "/healthz/ready") {
                return Ok(c);
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("weft-controller not ready after 15 s:\n{}", c.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http(self.monitoring, "GET", "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
