//! gRPC through the waypoint, on loopback, with a real tonic client and server: `sleep` on
//! node1 calls the bound service `echo` (port 50051, `appProtocol: grpc`); node1's weftd steers
//! it to the waypoint, which routes it by method (a GRPCRoute: `Say` to `echo-v2`, the rest to
//! `echo-v1`) on node2 through node2's weftd. Unary, server streaming, error statuses, metrics
//! and an L7 DENY policy, all as the tonic client sees them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use weft_core::model::route::grpc::{GrpcMethodMatch, GrpcRouteMatch, GrpcRouteRule, lower};
use weft_core::model::route::{PathMatchType, ValueMatchType};
use weft_tests::grpc_app::proto::echo_client::EchoClient;
use weft_tests::grpc_app::proto::{CountRequest, SayRequest};
use weft_tests::grpc_app::{GrpcApp, grpc_app, grpc_client};
use weft_tests::{
    Mesh, NodeAddrs, WaypointProcess, Weftd, connect_via, eventually, ip, metric_sum,
};

const ID: u8 = 58;
const PORT: u16 = 50051;
const AUTHORITY: &str = "echo.default.svc.cluster.local:50051";
const SAY: &str = "/weft.test.echo.Echo/Say";
const FAIL: &str = "/weft.test.echo.Echo/Fail";

fn vip() -> SocketAddr {
    SocketAddr::new(ip(ID, 0, 100), PORT)
}

fn pod(name: &str, labels: Value, addr: std::net::IpAddr, node: &str) -> Value {
    json!({"name": name, "namespace": "default", "serviceAccount": name,
           "ips": [addr.to_string()], "node": node, "labels": labels})
}

fn service(name: &str, host: u8, selector: Value) -> Value {
    json!({"name": name, "vips": [ip(ID, 0, host).to_string()],
           "ports": [{"port": PORT, "targetPort": PORT, "appProtocol": "grpc"}],
           "selector": selector})
}

struct Setup {
    m: Mesh,
    n1: Weftd,
    _n2: Weftd,
    wp: WaypointProcess,
    v1: GrpcApp,
    v2: GrpcApp,
}

async fn setup() -> Setup {
    let mut m = Mesh::new(ID, 2).unwrap();
    m.nodes.push("node3".into());
    m.workloads
        .push(pod("sleep", json!({"app": "sleep"}), ip(ID, 1, 1), "node1"));
    m.workloads.push(pod(
        "echo-v1",
        json!({"app": "echo", "version": "v1"}),
        ip(ID, 2, 1),
        "node2",
    ));
    m.workloads.push(pod(
        "echo-v2",
        json!({"app": "echo", "version": "v2"}),
        ip(ID, 2, 2),
        "node2",
    ));
    m.workloads.push(pod(
        "waypoint",
        json!({"app": "waypoint"}),
        ip(ID, 3, 250),
        "node3",
    ));
    let mut echo = service("echo", 100, json!({"app": "echo"}));
    echo["waypoint"] = json!("waypoint");
    m.services.push(echo);
    m.services
        .push(service("echo-v1", 101, json!({"version": "v1"})));
    m.services
        .push(service("echo-v2", 102, json!({"version": "v2"})));
    m.services.push(
        json!({"name": "waypoint", "vips": [ip(ID, 0, 110).to_string()],
               "ports": [{"port": 15008}], "selector": {"app": "waypoint"}}),
    );
    // A GRPCRoute as the mesh file keeps it: the HTTP rules it lowers to (method -> path).
    let backend = |name: &str| json!({"name": name, "port": PORT});
    m.routes.push(json!({
        "name": "echo", "namespace": "default", "kind": "GRPCRoute",
        "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": PORT}],
        "rules": [
            {"matches": [{"path": {"type": "Exact", "value": SAY}}],
             "backendRefs": [backend("echo-v2")]},
            {"backendRefs": [backend("echo-v1")]},
        ]
    }));
    let (n1, n2) = m.start_both().unwrap();
    let wp = m.start_waypoint().unwrap();
    let v1 = grpc_app(SocketAddr::new(ip(ID, 2, 1), PORT), "echo-v1")
        .await
        .unwrap();
    let v2 = grpc_app(SocketAddr::new(ip(ID, 2, 2), PORT), "echo-v2")
        .await
        .unwrap();
    Setup {
        m,
        n1,
        _n2: n2,
        wp,
        v1,
        v2,
    }
}

/// A tonic client on one connection from `sleep` through node1 to the service's VIP.
async fn client(node: &NodeAddrs) -> EchoClient<Channel> {
    let tcp = connect_via(node, ip(ID, 1, 1), vip()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), grpc_client(tcp, AUTHORITY))
        .await
        .expect("an HTTP/2 connection in time")
        .unwrap()
}

fn say(message: &str) -> SayRequest {
    SayRequest {
        message: message.into(),
        code: 0,
    }
}

fn fail(code: Code, message: &str) -> SayRequest {
    SayRequest {
        message: message.into(),
        code: code as i32,
    }
}

/// Any call, bounded: a hung waypoint fails the test instead of stalling it.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("an answer in time")
}

/// The method match of a GRPCRoute is the path the mesh file's route above names.
#[test]
fn grpc_route_method_lowers_to_the_exact_path() {
    let rule = GrpcRouteRule {
        matches: vec![GrpcRouteMatch {
            method: Some(GrpcMethodMatch {
                kind: ValueMatchType::Exact,
                service: Some("weft.test.echo.Echo".into()),
                method: Some("Say".into()),
            }),
            headers: Vec::new(),
        }],
        ..Default::default()
    };
    let lowered = lower(&rule).unwrap();
    let path = lowered.matches[0].path.as_ref().unwrap();
    assert_eq!(path.kind, PathMatchType::Exact);
    assert_eq!(path.value, SAY);
    assert_eq!(lowered.matches[0].method, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_unary_streaming_errors_and_authz_through_the_waypoint() {
    let mut s = setup().await;
    let mut c = client(&s.n1.addrs).await;

    // A burst of first requests: the waypoint opens one HTTP/2 connection to the endpoint
    // and the others wait for it, rather than each opening its own.
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..32 {
        let mut c = c.clone();
        burst.spawn(async move { within(c.say(say(&format!("burst {i}")))).await });
    }
    while let Some(r) = burst.join_next().await {
        let r = r.unwrap();
        assert!(r.is_ok(), "{r:?}\n{}", s.wp.logs());
    }
    assert_eq!(s.v2.calls("Say"), 32);
    assert_eq!(s.v2.connections(), 1, "{}", s.wp.logs());

    // Unary: Say is routed to echo-v2, with the waypoint's request headers.
    for i in 0..20 {
        let r = within(c.say(say(&format!("hello {i}")))).await;
        let r = match r {
            Ok(r) => r.into_inner(),
            Err(e) => panic!("Say {i}: {e:?}\n{}", s.wp.logs()),
        };
        assert_eq!(r.server, "echo-v2");
        assert_eq!(r.message, format!("hello {i}"));
        if i == 0 {
            let h = &r.headers;
            assert_eq!(
                h.get("x-forwarded-for").map(String::as_str),
                Some(ip(ID, 1, 1).to_string().as_str()),
                "{h:?}"
            );
            assert!(
                h.get("x-request-id").is_some_and(|v| v.len() == 36),
                "{h:?}"
            );
            assert!(
                h.get("traceparent").is_some_and(|v| v.starts_with("00-")),
                "{h:?}"
            );
            assert_eq!(h.get("te").map(String::as_str), Some("trailers"), "{h:?}");
        }
    }
    // Client metadata reaches the server; a traceparent the client sent is continued (same
    // trace id, the waypoint's own span).
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = tonic::Request::new(say("meta"));
    req.metadata_mut()
        .insert("x-client", "tonic".parse().unwrap());
    req.metadata_mut()
        .insert("traceparent", trace.parse().unwrap());
    let r = within(c.say(req)).await.unwrap().into_inner();
    assert_eq!(r.headers.get("x-client").map(String::as_str), Some("tonic"));
    let tp = r.headers.get("traceparent").cloned().unwrap_or_default();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp != trace,
        "{tp:?}"
    );
    assert_eq!(s.v2.calls("Say"), 32 + 21);
    assert_eq!(s.v1.calls("Say"), 0);

    // Server streaming: every message in order, then the OK status in the trailers.
    let mut stream = within(c.count(CountRequest { n: 100 }))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    loop {
        match within(stream.message()).await {
            Ok(Some(m)) => {
                assert_eq!(m.server, "echo-v1");
                got.push(m.index);
            }
            Ok(None) => break,
            Err(e) => panic!("Count after {} messages: {e:?}\n{}", got.len(), s.wp.logs()),
        }
    }
    assert_eq!(got, (0..100).collect::<Vec<u32>>());
    // tonic ends a stream without `grpc-status` with an error, so `None` above already means
    // the trailers crossed the waypoint; here they are.
    let trailers = within(stream.trailers()).await.unwrap().expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("0"),
        "{trailers:?}"
    );
    assert_eq!(s.v1.calls("Count"), 1);

    // An error status with its message crosses the waypoint in the trailers.
    let e = within(c.fail(fail(Code::NotFound, "no such thing")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}\n{}", s.wp.logs());
    assert_eq!(e.message(), "no such thing");
    assert_eq!(s.v1.calls("Fail"), 1);

    // Request metrics, with the gRPC protocol and status.
    let grpc = [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_service=\"echo.default.svc.cluster.local\"",
        "request_protocol=\"grpc\"",
    ];
    let metrics = || s.wp.metrics();
    let status = |code: &str| {
        let want = format!("grpc_response_status=\"{code}\"");
        let mut labels = grpc.to_vec();
        labels.push(&want);
        metric_sum(&metrics(), "weft_requests_total", &labels)
    };
    assert!(
        eventually(Duration::from_secs(5), || status("5") == 1.0).await,
        "{}",
        metrics()
    );
    assert!(
        eventually(Duration::from_secs(5), || status("0") == 32.0 + 22.0).await,
        "{}",
        metrics()
    );
    let v2_ok = [
        "request_protocol=\"grpc\"",
        "destination_workload=\"echo-v2\"",
        "response_code=\"200\"",
    ];
    assert_eq!(
        metric_sum(&metrics(), "weft_requests_total", &v2_ok),
        32.0 + 21.0,
        "{}",
        metrics()
    );

    // Phase two: a DENY policy on the Service for Fail. The waypoint answers it itself with
    // PERMISSION_DENIED; Say still works.
    let updates = |wp: &WaypointProcess| wp.logs().matches("mesh state updated").count();
    let before = updates(&s.wp);
    s.m.policies.push(json!({
        "name": "deny-fail", "namespace": "default",
        "targetRefs": [{"kind": "Service", "name": "echo"}],
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": [FAIL]}}]}]
    }));
    s.m.write().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || updates(&s.wp) > before).await,
        "the waypoint did not reload:\n{}",
        s.wp.logs()
    );
    let e = within(c.fail(fail(Code::NotFound, "should not arrive")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}\n{}", s.wp.logs());
    // From `grpc-status` and `grpc-message` (trailers-only), not mapped from an HTTP 403.
    assert!(e.message().starts_with("RBAC: access denied"), "{e:?}");
    assert_eq!(s.v1.calls("Fail"), 1, "a denied call reached the server");
    let r = within(c.say(say("still here"))).await;
    assert_eq!(r.unwrap().into_inner().server, "echo-v2");
    // A new connection sees the policy too.
    let mut c2 = client(&s.n1.addrs).await;
    let e = within(c2.fail(fail(Code::Internal, "x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(s.v1.calls("Fail"), 1);
    let denied = [
        "request_protocol=\"grpc\"",
        "grpc_response_status=\"7\"",
        "response_flags=\"RBAC\"",
    ];
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &metrics(),
            "weft_requests_total",
            &denied
        ) == 2.0)
        .await,
        "{}",
        metrics()
    );
}
