//! The controller end to end over real gRPC and TLS on loopback, with the Kubernetes API faked
//! at the HTTP boundary under `kube::Client` (TokenReview answered by a handler, pods and the
//! CA Secret held by the fake).

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, StatusCode};
use prost_types::value::Kind;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weft_core::discovery::cluster::fake::FakeApi;
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
    }
}

async fn controller(api: FakeApi, ca: CaSource) -> Controller {
    let client = kube::Client::new(api.clone(), "default");
    let stop = CancellationToken::new();
    let running = run::start(options(ca), client, stop.clone()).await.unwrap();
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

#[tokio::test]
async fn a_node_agent_gets_certificates_for_its_own_pods_only() {
    let c = controller(cluster(), secret_source()).await;
    let dir = tempfile::tempdir().unwrap();
    let weftd_a = c.remote("weftd-a", &dir, true);

    // A pod scheduled on the caller's node: issued, and the chain verifies in a real handshake.
    let reviews = weftd_a.issue(&id("shop", "reviews")).await.unwrap();
    assert_eq!(reviews.identity, id("shop", "reviews"));
    let lifetime = reviews
        .not_after
        .duration_since(reviews.not_before)
        .unwrap();
    assert!(lifetime <= Duration::from_secs(1800 + 61), "{lifetime:?}");
    let own = weftd_a.issue(&id("weft", "weftd")).await.unwrap();
    let reviews = WorkloadCertificate::new(reviews, c.anchors.clone(), TD).unwrap();
    let own = WorkloadCertificate::new(own, c.anchors.clone(), TD).unwrap();
    handshake(&own, &reviews).await;
    handshake(&reviews, &own).await;

    // A service account whose only pod runs on node-b: refused for node-a, issued for node-b.
    let err = weftd_a
        .issue(&id("shop", "ratings"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("node-a"),
        "{err}"
    );
    let weftd_b = c.remote("weftd-b", &dir, true);
    weftd_b.issue(&id("shop", "ratings")).await.unwrap();

    // A finished pod does not count as running on the node.
    let err = weftd_a
        .issue(&id("shop", "batch"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("PermissionDenied"), "{err}");

    let metrics = c.metrics().await;
    assert!(
        metrics.contains(r#"weft_certificate_requests_total{result="issued",reason=""} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"weft_certificate_requests_total{result="refused",reason="not_on_node"} 2"#
        ),
        "{metrics}"
    );
    assert_eq!(
        http_get(c.running.monitoring, "/healthz/ready").await.0,
        200
    );
}

#[tokio::test]
async fn refusals_carry_the_right_status_and_the_controller_keeps_serving() {
    let c = controller(cluster(), secret_source()).await;
    let reviews = id("shop", "reviews");
    let (_, csr) = new_request(&reviews).unwrap();
    use tonic::Code;

    let s = refused(&c, csr.clone(), Some(&reviews), None).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = refused(&c, csr.clone(), Some(&reviews), Some("stolen-or-expired")).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("invalid bearer token"), "{s:?}");
    let s = refused(&c, csr.clone(), Some(&reviews), Some("other-audience")).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = refused(&c, csr.clone(), Some(&reviews), Some("a-user")).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // A CSR naming another identity than the one asked for.
    let (_, ratings_csr) = new_request(&id("shop", "ratings")).unwrap();
    let s = refused(&c, ratings_csr, Some(&reviews), Some("weftd-a")).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message()
            .contains("spiffe://cluster.local/ns/shop/sa/ratings"),
        "{s:?}"
    );

    // Garbage where the CSR should be, and a garbage identity.
    let s = refused(
        &c,
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n".to_owned(),
        Some(&reviews),
        Some("weftd-a"),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let mut bad = request(csr.clone(), None, Some("weftd-a"));
    bad.get_mut().metadata = Some(prost_types::Struct {
        fields: BTreeMap::from([(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value {
                kind: Some(Kind::StringValue(
                    "spiffe://cluster.local/../../etc".to_owned(),
                )),
            },
        )]),
    });
    let s = c.raw().create_certificate(bad).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // Another mesh's trust domain.
    let foreign = SpiffeId::new("other.mesh", "shop", "reviews").unwrap();
    let (_, foreign_csr) = new_request(&foreign).unwrap();
    let s = refused(&c, foreign_csr, Some(&foreign), Some("weftd-a")).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // A workload may have its own identity, but not impersonate another on its node.
    let (_, own_csr) = new_request(&reviews).unwrap();
    c.raw()
        .create_certificate(request(own_csr, None, Some("reviews")))
        .await
        .expect("a workload's own identity");
    let (_, other) = new_request(&id("weft", "weftd")).unwrap();
    let s = refused(&c, other, Some(&id("weft", "weftd")), Some("reviews")).await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // A node agent whose token is not bound to a pod has no node.
    let s = refused(&c, csr.clone(), Some(&reviews), Some("weftd-unbound")).await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // Bytes that are not TLS at all, then a TLS client that says nothing: dropped.
    let mut tcp = tokio::net::TcpStream::connect(c.running.grpc)
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n\x00\xff garbage")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;

    // The API server gone: UNAVAILABLE, not a wrong answer.
    c.api.set_down(true);
    let s = refused(&c, csr.clone(), Some(&reviews), Some("weftd-a")).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    c.api.set_down(false);

    // Still serving.
    let response = c
        .raw()
        .create_certificate(request(csr, Some(&reviews), Some("weftd-a")))
        .await
        .expect("a valid request after all that")
        .into_inner();
    assert!(
        response.cert_chain.len() >= 2,
        "leaf and root: {response:?}"
    );
    assert_eq!(response.root_cert.map(|r| r.ca_cert.len()), Some(1));

    let metrics = c.metrics().await;
    for reason in [
        "no_token",
        "token_rejected",
        "identity_mismatch",
        "malformed_csr",
        "bad_request",
        "not_node_agent",
        "caller_unbound",
        "api_unavailable",
    ] {
        assert!(
            metrics.contains(&format!(r#"result="refused",reason="{reason}""#)),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn the_created_root_survives_a_restart_and_ca_files_are_used_as_given() {
    let api = cluster();
    let first = controller(api.clone(), secret_source()).await;
    let secret = api
        .get("Secret", "weft/weft-ca")
        .expect("the CA Secret was created");
    assert!(secret["data"]["ca-key.pem"].is_string());
    let root = first.anchors.certificates().to_vec();
    drop(first);
    let second = controller(api.clone(), secret_source()).await;
    assert_eq!(
        second.anchors.certificates(),
        root.as_slice(),
        "a restart keeps the root"
    );

    // CA files (Istio's cacerts layout) instead of the Secret.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        weft_core::identity::generate_root("files root", Duration::from_secs(86400)).unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), &key).unwrap();
    let api = cluster();
    let c = controller(api, CaSource::Files(dir.path().to_owned())).await;
    let want = TrustAnchors::from_pem(&cert, "test").unwrap();
    assert_eq!(c.anchors.certificates(), want.certificates());
    let tokens = tempfile::tempdir().unwrap();
    c.remote("weftd-a", &tokens, true)
        .issue(&id("shop", "reviews"))
        .await
        .unwrap();

    // A bad CA Secret stops the start with a message that names it.
    let api = cluster();
    api.apply(json!({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"namespace": "weft", "name": "weft-ca"},
                     "data": {"ca-cert.pem": "bm90IGEgY2VydA=="}}));
    let client = kube::Client::new(api.clone(), "default");
    let err = run::start(options(secret_source()), client, CancellationToken::new())
        .await
        .err()
        .expect("a broken CA Secret must not start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("weft/weft-ca") && msg.contains("ca-key.pem"),
        "{msg}"
    );
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
           "metadata": {"namespace": "shop", "name": name, "generation": 1}, "spec": spec})
}

fn accepted(api: &FakeApi, name: &str) -> Option<(String, String, String)> {
    let p = api.get("AuthorizationPolicy", &format!("shop/{name}"))?;
    let c = p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((s("status"), s("reason"), s("message")))
}

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

#[tokio::test]
async fn each_policy_says_in_its_status_what_the_mesh_makes_of_it() {
    let api = cluster();
    let from = |p: &str| json!([{"from": [{"source": {"principals": [p]}}]}]);
    api.apply(policy(
        "ok",
        json!({"action": "ALLOW", "rules": from("cluster.local/ns/shop/sa/web")}),
    ));
    api.apply(policy(
        "bad",
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["eighty"]}}]}]}),
    ));
    api.apply(policy(
        "l7",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}),
    ));
    let c = controller(api.clone(), secret_source()).await;
    let all_written = || {
        ["ok", "bad", "l7"]
            .iter()
            .all(|n| accepted(&c.api, n).is_some())
    };
    assert!(
        until(Duration::from_secs(10), all_written).await,
        "{:?}",
        c.api.get("AuthorizationPolicy", "shop/bad")
    );

    let (status, reason, _) = accepted(&c.api, "ok").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));
    let (status, reason, message) = accepted(&c.api, "bad").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.contains("spec.rules[0].to[0].operation.ports[0]")
            && message.contains("allows nothing"),
        "{message}"
    );
    let (status, reason, message) = accepted(&c.api, "l7").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "L7RulesAtL4"));
    assert!(message.contains("waypoint"), "{message}");

    // Written once each: its own patch, coming back as an event, changes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.api.patches("authorizationpolicies"), 3);

    // Fixed: the condition follows.
    let mut fixed = c.api.get("AuthorizationPolicy", "shop/bad").unwrap();
    fixed["spec"]["rules"][0]["to"][0]["operation"]["ports"] = json!(["8080"]);
    fixed["metadata"]["generation"] = json!(2);
    c.api.apply(fixed);
    let fixed_ok = || accepted(&c.api, "bad").is_some_and(|(s, _, _)| s == "True");
    assert!(
        until(Duration::from_secs(10), fixed_ok).await,
        "{:?}",
        accepted(&c.api, "bad")
    );
}
