//! The controller end to end over real gRPC and TLS on loopback, with the Kubernetes API faked
//! at the HTTP boundary under `kube::Client` (TokenReview answered by a handler, pods and the
//! CA Secret held by the fake). This module is the harness; the tests are by concern.

mod authority;
mod cli;
mod gateways;
mod issue;
mod policies;
mod routes;

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, StatusCode};
use prost_types::value::Kind;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weft_core::discovery::cluster::fake::{FakeApi, Grants};
use weft_core::identity::protocol::istio_certificate_service_client::IstioCertificateServiceClient;
use weft_core::identity::protocol::{IMPERSONATED_IDENTITY, IstioCertificateRequest};
use weft_core::identity::{
    CertificateProvider, RemoteCa, RemoteCaConfig, SpiffeId, TrustAnchors, WorkloadCertificate,
    control_channel, new_request,
};

use crate::authority::CaSource;
use crate::issue::Lifetimes;
use crate::run::{self, Running};

const TD: &str = "cluster.local";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

fn pod(ns: &str, name: &str, uid: &str, sa: &str, node: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "uid": uid},
           "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
           "status": {"phase": phase, "podIP": "10.0.0.1"}})
}

/// A token the fake TokenReview knows: username, bound pod (name, uid), audiences.
type Review = (
    &'static str,
    Option<(&'static str, &'static str)>,
    Vec<&'static str>,
);

fn token_reviews() -> BTreeMap<&'static str, Review> {
    BTreeMap::from([
        (
            "weftd-a",
            (
                "system:serviceaccount:weft:weftd",
                Some(("weftd-a", "uid-a")),
                vec!["weft-ca"],
            ),
        ),
        (
            "weftd-b",
            (
                "system:serviceaccount:weft:weftd",
                Some(("weftd-b", "uid-b")),
                vec!["weft-ca"],
            ),
        ),
        (
            "reviews",
            (
                "system:serviceaccount:shop:reviews",
                Some(("reviews-1", "uid-r")),
                vec!["weft-ca"],
            ),
        ),
        (
            "weftd-unbound",
            ("system:serviceaccount:weft:weftd", None, vec!["weft-ca"]),
        ),
        (
            "other-audience",
            (
                "system:serviceaccount:weft:weftd",
                Some(("weftd-a", "uid-a")),
                vec!["https://kubernetes.default.svc"],
            ),
        ),
        ("a-user", ("alice", None, vec!["weft-ca"])),
    ])
}

fn cluster() -> FakeApi {
    let api = FakeApi::default();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft"}}));
    api.apply(pod(
        "weft", "weftd-a", "uid-a", "weftd", "node-a", "Running",
    ));
    api.apply(pod(
        "weft", "weftd-b", "uid-b", "weftd", "node-b", "Running",
    ));
    api.apply(pod(
        "shop",
        "reviews-1",
        "uid-r",
        "reviews",
        "node-a",
        "Running",
    ));
    api.apply(pod(
        "shop",
        "ratings-1",
        "uid-t",
        "ratings",
        "node-b",
        "Running",
    ));
    api.apply(pod(
        "shop",
        "batch-1",
        "uid-j",
        "batch",
        "node-a",
        "Succeeded",
    ));
    let tokens = token_reviews();
    api.set_handler(Box::new(move |method, path, body| {
        if method != Method::POST || !path.ends_with("/tokenreviews") {
            return None;
        }
        let review: Value = serde_json::from_slice(body).unwrap_or_default();
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let status = match tokens.get(token) {
            Some((user, pod, audiences)) => {
                let mut extra = json!({});
                if let Some((name, uid)) = pod {
                    extra = json!({"authentication.kubernetes.io/pod-name": [name],
                                   "authentication.kubernetes.io/pod-uid": [uid]});
                }
                json!({"authenticated": true, "audiences": audiences,
                       "user": {"username": user, "extra": extra}})
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        Some((
            StatusCode::CREATED,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "metadata": {}, "spec": review["spec"], "status": status}),
        ))
    }));
    api
}

fn options(ca: CaSource) -> run::Options {
    run::Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        trust_domain: TD.to_owned(),
        namespace: "weft".to_owned(),
        service_account: "weft-controller".to_owned(),
        dns_names: vec!["weft-controller.weft.svc".to_owned()],
        ca,
        root_configmap: "weft-ca-root".to_owned(),
        root_lifetime: Duration::from_secs(3600 * 24 * 365),
        lifetimes: Lifetimes {
            default: Duration::from_secs(3600),
            max: Duration::from_secs(7200),
        },
        node_agents: vec!["weft/weftd".parse().unwrap()],
        audiences: vec!["weft-ca".to_owned()],
        waypoint_image: "weft/weft-waypoint:test".to_owned(),
        ca_address: "https://weft-controller.weft.svc:15012".to_owned(),
        waypoint_tracing: None,
    }
}

fn secret_source() -> CaSource {
    CaSource::Secret {
        namespace: "weft".to_owned(),
        name: "weft-ca".to_owned(),
    }
}

struct Controller {
    api: FakeApi,
    running: Running,
    stop: CancellationToken,
    /// The root as weftd would read it: from the published ConfigMap.
    anchors: TrustAnchors,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.cancel();
        if !std::thread::panicking() {
            assert_permitted(&self.api);
        }
    }
}

/// Every request the controller made of the fake is one the chart's RBAC grants it: what
/// works here is then not refused by a real API server.
fn assert_permitted(api: &FakeApi) {
    let manifests = include_str!("../../../deploy/manifests/weft.yaml");
    let grants = Grants::bound(manifests, "weft", "weft-controller");
    assert!(
        !grants.is_empty(),
        "no RBAC for weft-controller in the manifests"
    );
    let refused = grants.refused(&api.asked());
    assert!(
        refused.is_empty(),
        "the chart's RBAC does not grant weft-controller: {refused:#?}"
    );
}

async fn controller(api: FakeApi, ca: CaSource) -> Controller {
    controller_with(api, options(ca)).await
}

async fn controller_with(api: FakeApi, options: run::Options) -> Controller {
    let client = kube::Client::new(api.clone(), "default");
    let stop = CancellationToken::new();
    let running = run::start(options, client, stop.clone()).await.unwrap();
    let map = api
        .get("ConfigMap", "weft/weft-ca-root")
        .expect("root ConfigMap published");
    let pem = map["data"]["root-cert.pem"].as_str().unwrap().to_owned();
    let anchors = TrustAnchors::from_pem(&pem, "ConfigMap weft/weft-ca-root").unwrap();
    Controller {
        api,
        running,
        stop,
        anchors,
    }
}

impl Controller {
    fn address(&self) -> String {
        format!("https://{}", self.running.grpc)
    }

    /// weftd's provider, with `token` in its projected token file.
    fn remote(&self, token: &str, dir: &tempfile::TempDir, impersonate: bool) -> RemoteCa {
        let path = dir.path().join(format!("{token}.jwt"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        RemoteCa::new(RemoteCaConfig {
            address: self.address(),
            server_identity: id("weft", "weft-controller"),
            anchors: self.anchors.clone(),
            token_path: Some(path),
            lifetime: Duration::from_secs(1800),
            impersonate,
        })
        .unwrap()
    }

    fn raw(&self) -> IstioCertificateServiceClient<tonic::transport::Channel> {
        IstioCertificateServiceClient::new(
            control_channel(
                &self.address(),
                &self.anchors,
                id("weft", "weft-controller"),
            )
            .unwrap(),
        )
    }

    async fn metrics(&self) -> String {
        http_get(self.running.monitoring, "/metrics").await.1
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn request(
    csr: String,
    impersonate: Option<&SpiffeId>,
    token: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: BTreeMap::from([(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value {
                kind: Some(Kind::StringValue(id.to_string())),
            },
        )]),
    });
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn refused(
    c: &Controller,
    csr: String,
    impersonate: Option<&SpiffeId>,
    token: Option<&str>,
) -> tonic::Status {
    c.raw()
        .create_certificate(request(csr, impersonate, token))
        .await
        .expect_err("the request should have been refused")
}

/// A TLS handshake between two issued certificates with the mesh's own verifiers: the client
/// expects the server's identity, the server checks the client's chain.
async fn handshake(client: &WorkloadCertificate, server: &WorkloadCertificate) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let connector =
        tokio_rustls::TlsConnector::from(client.client_config(server.identity()).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let name = rustls::pki_types::ServerName::try_from("peer.invalid").unwrap();
    let (c, s) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
    let c = c.expect("client side of the handshake");
    let s = s.expect("server side of the handshake");
    let seen = weft_core::identity::connection_peer_identity(s.get_ref().1).unwrap();
    assert_eq!(&seen, client.identity());
    drop(c);
}

/// Whether `f` holds within `limit` (polled).
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
