//! HTTP through the waypoint, on loopback: `sleep` on node1 speaks HTTP/1.1 or HTTP/2 to the
//! bound service `web`; node1's weftd steers it to the waypoint, which routes it (Gateway API
//! rules from the mesh file) to `web-v1` or `web-v2` on node2 through node2's weftd.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use weft_tests::http_app::{HttpApp, http_app, read, send};
use weft_tests::{
    Mesh, NodeAddrs, WaypointProcess, Weftd, connect_via, eventually, ip, metric_sum,
};

const ID: u8 = 57;
/// The policy test's own addresses.
const POLICY_ID: u8 = 59;

fn vip_of(id: u8) -> SocketAddr {
    SocketAddr::new(ip(id, 0, 100), 80)
}

fn vip() -> SocketAddr {
    vip_of(ID)
}

fn pod(name: &str, labels: Value, addr: std::net::IpAddr, node: &str) -> Value {
    json!({"name": name, "namespace": "default", "serviceAccount": name,
           "ips": [addr.to_string()], "node": node, "labels": labels})
}

fn service(id: u8, name: &str, host: u8, selector: Value) -> Value {
    json!({"name": name, "vips": [ip(id, 0, host).to_string()],
           "ports": [{"port": 80, "targetPort": 8080}], "selector": selector})
}

struct Setup {
    m: Mesh,
    n1: Weftd,
    n2: Weftd,
    wp: WaypointProcess,
    v1: HttpApp,
    v2: HttpApp,
}

/// `sleep` on node1; `web-v1` and `web-v2` on node2 behind `web` (bound to the waypoint) and
/// their own Services; the waypoint's workload and Service on node3.
fn topology(id: u8) -> Mesh {
    let mut m = Mesh::new(id, 2).unwrap();
    m.nodes.push("node3".into());
    let v = |n| json!({"app": "web", "version": n});
    m.workloads
        .push(pod("sleep", json!({"app": "sleep"}), ip(id, 1, 1), "node1"));
    m.workloads
        .push(pod("web-v1", v("v1"), ip(id, 2, 1), "node2"));
    m.workloads
        .push(pod("web-v2", v("v2"), ip(id, 2, 2), "node2"));
    m.workloads.push(pod(
        "waypoint",
        json!({"app": "waypoint"}),
        ip(id, 3, 250),
        "node3",
    ));
    let mut web = service(id, "web", 100, json!({"app": "web"}));
    web["waypoint"] = json!("waypoint");
    m.services.push(web);
    m.services
        .push(service(id, "web-v1", 101, json!({"version": "v1"})));
    m.services
        .push(service(id, "web-v2", 102, json!({"version": "v2"})));
    m.services.push(
        json!({"name": "waypoint", "vips": [ip(id, 0, 110).to_string()],
                           "ports": [{"port": 15008}], "selector": {"app": "waypoint"}}),
    );
    m
}

async fn setup() -> Setup {
    let mut m = topology(ID);
    let backend = |name: &str| json!({"name": name, "port": 80});
    m.routes.push(json!({
        "name": "web", "namespace": "default",
        "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
        "rules": [
            {"matches": [{"headers": [{"name": "x-version", "value": "v2"}]}],
             "backendRefs": [backend("web-v2")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/fail"}}],
             "backendRefs": [backend("web-v1")],
             "retry": {"codes": [503], "attempts": 2, "backoff": "5ms"}},
            {"matches": [{"path": {"type": "Exact", "value": "/slow"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/sleep/3000"}}}],
             "backendRefs": [backend("web-v1")],
             "timeouts": {"request": "300ms"}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}, "statusCode": 301}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}],
             "filters": [
                {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-added", "value": "yes"}], "remove": ["x-drop"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-resp", "value": "set"}]}}],
             "backendRefs": [backend("web-v1")]},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}},
                         {"queryParams": [{"name": "pin", "value": "v2"}]}],
             "backendRefs": [backend("web-v2")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/mirror"}}],
             "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": backend("web-v2")}}],
             "backendRefs": [backend("web-v1")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
             "backendRefs": [backend("no-such-service")]},
            {"backendRefs": [
                {"name": "web-v1", "port": 80, "weight": 90},
                {"name": "web-v2", "port": 80, "weight": 10}]},
        ]
    }));
    let (n1, n2) = m.start_both().unwrap();
    let wp = m.start_waypoint().unwrap();
    let v1 = http_app(SocketAddr::new(ip(ID, 2, 1), 8080), "web-v1")
        .await
        .unwrap();
    let v2 = http_app(SocketAddr::new(ip(ID, 2, 2), 8080), "web-v2")
        .await
        .unwrap();
    Setup {
        m,
        n1,
        n2,
        wp,
        v1,
        v2,
    }
}

type H1 = http1::SendRequest<Full<Bytes>>;

async fn h1(node: &NodeAddrs) -> H1 {
    let tcp = connect_via(node, ip(ID, 1, 1), vip()).await.unwrap();
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn h2(node: &NodeAddrs) -> http2::SendRequest<Full<Bytes>> {
    let tcp = connect_via(node, ip(ID, 1, 1), vip()).await.unwrap();
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "web.default.svc.cluster.local")
        .body(Full::default())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_filters_splits_and_retries_through_the_waypoint() {
    let mut s = setup().await;
    let mut c = h1(&s.n1.addrs).await;

    // The default rule splits 90/10: 1000 requests on one kept connection.
    let mut v2 = 0;
    for i in 0..1000 {
        let a = send(&mut c, get("/")).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "request {i}: {}\n{}",
            a.text,
            s.wp.logs()
        );
        if a.json["server"] == "web-v2" {
            v2 += 1;
        }
    }
    assert!(
        (50..=150).contains(&v2),
        "web-v2 got {v2} of 1000, expected 100 +- 50"
    );

    // A header pins v2.
    for _ in 0..20 {
        let mut req = get("/");
        req.headers_mut().insert("x-version", "v2".parse().unwrap());
        assert_eq!(send(&mut c, req).await.json["server"], "web-v2");
    }
    // Regex path or query parameter: v2 too; a non-matching path falls to the split.
    assert_eq!(
        send(&mut c, get("/items/42")).await.json["server"],
        "web-v2"
    );
    assert_eq!(
        send(&mut c, get("/x?a=1&pin=v2")).await.json["server"],
        "web-v2"
    );

    // Rewrite and header modifiers as the server sees them.
    let mut req = get("/api/things?q=1");
    req.headers_mut()
        .insert("x-drop", "secret".parse().unwrap());
    let a = send(&mut c, req).await;
    assert_eq!(a.json["server"], "web-v1");
    assert_eq!(a.json["path"], "/things?q=1");
    assert_eq!(a.json["headers"]["x-added"], "yes");
    assert!(a.json["headers"].get("x-drop").is_none(), "{}", a.text);
    assert_eq!(a.headers["x-resp"], "set");
    // The waypoint's own request headers.
    let h = &a.json["headers"];
    assert_eq!(h["x-forwarded-for"], ip(ID, 1, 1).to_string(), "{}", a.text);
    assert!(
        h["x-request-id"].as_str().is_some_and(|v| v.len() == 36),
        "{}",
        a.text
    );
    assert!(
        h["traceparent"]
            .as_str()
            .is_some_and(|v| v.starts_with("00-")),
        "{}",
        a.text
    );
    // POST does not match the GET-only rule: it takes the split, unrewritten.
    let post = Request::post("/api/things")
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let a = send(&mut c, post).await;
    assert_eq!(a.json["path"], "/api/things", "{}", a.text);

    // A redirect is answered by the waypoint itself.
    let a = send(&mut c, get("/old/page?x=1")).await;
    assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        a.headers["location"],
        "http://web.default.svc.cluster.local/new/page?x=1"
    );

    // A backend that fails its first attempt is retried: the client sees 200.
    let a = send(&mut c, get("/fail/once/a")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(s.v1.count("/fail/once/a"), 2);
    // A POST whose body is larger than the retry buffer is sent once, never retried.
    let big = Request::post("/fail/once/big")
        .body(Full::new(Bytes::from(vec![7u8; 100 * 1024])))
        .unwrap();
    let a = send(&mut c, big).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.v1.count("/fail/once/big"), 1);
    // A small POST body is held and replayed.
    let small = Request::post("/fail/once/small")
        .body(Full::new(Bytes::from("hello")))
        .unwrap();
    let a = send(&mut c, small).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["body_bytes"], 5);

    // The budget caps retries under a backend that always fails: 200 requests with two
    // retries each would make 600 attempts; the budget allows a fifth more plus a floor.
    let before = s.v1.count("/fail/always");
    for _ in 0..200 {
        assert_eq!(
            send(&mut c, get("/fail/always")).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let attempts = s.v1.count("/fail/always") - before;
    assert!(
        (200..=330).contains(&attempts),
        "{attempts} attempts for 200 requests"
    );

    // The request timeout answers 504 on time.
    let start = Instant::now();
    let a = send(&mut c, get("/slow")).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.text);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "{took:?}"
    );

    // A mirror gets a copy; the client does not wait for it.
    let a = send(&mut c, get("/mirror/1")).await;
    assert_eq!(a.json["server"], "web-v1");
    let mirrored = || s.v2.count("/mirror/1") == 1;
    assert!(weft_tests::eventually(Duration::from_secs(5), mirrored).await);

    // A backend Service that does not exist: 503, and the waypoint keeps serving.
    assert_eq!(
        send(&mut c, get("/missing")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(send(&mut c, get("/")).await.status, StatusCode::OK);

    // `Expect: 100-continue`: the waypoint says continue, then the body goes through.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = connect_via(&s.n1.addrs, ip(ID, 1, 1), vip()).await.unwrap();
        let body = vec![b'x'; 300 * 1024];
        let head = format!(
            "POST /upload HTTP/1.1\r\nhost: web\r\ncontent-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("100 Continue in time")
            .unwrap();
        let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
        tcp.write_all(&body).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.starts_with("HTTP/1.1 200") || interim.contains("HTTP/1.1 200"),
            "{text}"
        );
        assert!(
            text.contains(&format!("\"body_bytes\":{}", body.len())),
            "{text}"
        );
    }

    // Any other upgrade (h2c above all) is not passed on: after a 101 nothing would be routed
    // or authorized again. The request goes on as plain HTTP.
    let mut h2c = get("/h2c-attempt");
    h2c.headers_mut()
        .insert("connection", "upgrade, http2-settings".parse().unwrap());
    h2c.headers_mut().insert("upgrade", "h2c".parse().unwrap());
    h2c.headers_mut().insert(
        "http2-settings",
        "AAMAAABkAARAAAAAAAIAAAAA".parse().unwrap(),
    );
    let a = send(&mut c, h2c).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.json["headers"].get("upgrade").is_none(), "{}", a.text);
    assert!(
        a.json["headers"].get("http2-settings").is_none(),
        "{}",
        a.text
    );

    // A WebSocket upgrade gets its own connection and both ways are spliced.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = connect_via(&s.n1.addrs, ip(ID, 1, 1), vip()).await.unwrap();
        tcp.write_all(
            b"GET /upgrade HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
                .await
                .expect("101 in time")
                .unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        tcp.write_all(b"raw bytes after the upgrade").await.unwrap();
        let mut echoed = [0u8; 27];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(&echoed, b"raw bytes after the upgrade");
    }

    // HTTP/2 prior knowledge from the client: multiplexed, and sent on as HTTP/2.
    let mut c2 = h2(&s.n1.addrs).await;
    let mut pending = Vec::new();
    for _ in 0..20 {
        let req = Request::get("http://web.default.svc.cluster.local/h2")
            .body(Full::default())
            .unwrap();
        c2.ready().await.unwrap();
        pending.push(c2.send_request(req));
    }
    for p in pending {
        let a = read(p.await.unwrap()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json["version"], "HTTP/2.0", "{}", a.text);
    }

    // Request metrics, with Istio's labels, response codes and flags.
    let metrics = s.wp.metrics();
    let ok = [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "source_workload=\"sleep\"",
        "destination_service=\"web.default.svc.cluster.local\"",
        "destination_workload=\"web-v1\"",
        "response_code=\"200\"",
        "request_protocol=\"http\"",
    ];
    assert!(
        metric_sum(&metrics, "weft_requests_total", &ok) >= 800.0,
        "{metrics}"
    );
    let exhausted = ["response_code=\"503\"", "response_flags=\"URX\""];
    assert!(
        metric_sum(&metrics, "weft_requests_total", &exhausted) >= 1.0,
        "{metrics}"
    );
    let timeout = ["response_code=\"504\"", "response_flags=\"UT\""];
    assert_eq!(
        metric_sum(&metrics, "weft_requests_total", &timeout),
        1.0,
        "{metrics}"
    );
    assert!(metric_sum(&metrics, "weft_request_duration_milliseconds_count", &ok) >= 800.0);
    // The destination node took the waypoint's word on the original client.
    let dest = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
    ];
    assert!(metric_sum(&s.n2.metrics(), "weft_tcp_connections_opened_total", &dest) >= 1.0);
    // Connections to the backends are kept: far fewer tunnels than requests.
    let tunnels = metric_sum(
        &s.n2.metrics(),
        "weft_tcp_connections_opened_total",
        &["reporter=\"destination\""],
    );
    assert!(tunnels < 50.0, "{tunnels} tunnels for ~1500 requests");

    // The compiled routes, in the order they are tried.
    let dump = s.wp.config_dump().unwrap();
    let entries = &dump["routes"][0]["entries"];
    assert_eq!(dump["routes"][0]["service"], "default/web");
    assert_eq!(
        entries[0]["matches"], r#"{"path":{"type":"Exact","value":"/slow"}}"#,
        "{dump:#}"
    );

    // web-v2 gone from the mesh: its request series go with it (a waypoint's series would
    // otherwise outlive every pod it ever sent to); web-v1's stay.
    let v2_series = |metrics: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with("weft_request") && l.contains("destination_workload=\"web-v2\""))
    };
    assert!(v2_series(&metrics), "{metrics}");
    s.m.workloads.retain(|w| w["name"] != "web-v2");
    s.m.write().unwrap();
    let forgotten = || !v2_series(&s.wp.metrics());
    assert!(
        eventually(Duration::from_secs(5), forgotten).await,
        "{}",
        s.wp.metrics()
    );
    assert!(metric_sum(&s.wp.metrics(), "weft_requests_total", &ok) >= 800.0);
}

/// One HTTP/1.1 request written as raw bytes (so odd paths reach the waypoint as sent), on
/// its own connection; the status code of the answer.
async fn raw_status(node: &NodeAddrs, id: u8, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = connect_via(node, ip(id, 1, 1), vip_of(id)).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn l7_policy_at_the_waypoint_and_the_original_client_at_the_destination() {
    let id = POLICY_ID;
    let mut m = topology(id);
    // At the waypoint: no DELETE, nothing under /admin.
    m.policies
        .push(json!({"name": "no-delete", "namespace": "default",
        "targetRefs": [{"kind": "Service", "name": "web"}], "action": "DENY",
        "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}));
    m.policies.push(json!({"name": "no-admin", "namespace": "default",
        "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]}));
    // At the destination node: only `sleep` may reach web's pods. The waypoint is not allowed
    // itself: requests through it arrive only because node2 takes its word on the client.
    m.policies
        .push(json!({"name": "only-sleep", "namespace": "default",
        "selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]}));
    let (n1, _n2) = m.start_both().unwrap();
    let wp = m.start_waypoint().unwrap();
    let v1 = http_app(SocketAddr::new(ip(id, 2, 1), 8080), "web-v1")
        .await
        .unwrap();
    let _v2 = http_app(SocketAddr::new(ip(id, 2, 2), 8080), "web-v2")
        .await
        .unwrap();

    let req = |line: &str| format!("{line} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    assert_eq!(
        raw_status(&n1.addrs, id, &req("GET /")).await,
        200,
        "{}\n{}\n{}",
        wp.logs(),
        n1.logs(),
        _n2.logs()
    );
    assert_eq!(
        raw_status(&n1.addrs, id, &req("GET /public/admin")).await,
        200
    );
    assert_eq!(raw_status(&n1.addrs, id, &req("DELETE /")).await, 403);
    // Every spelling of /admin is the same path to the policy.
    for path in [
        "/admin",
        "/admin/users",
        "/a/../admin",
        "/%61dmin",
        "//admin",
        "/x/..%2Fadmin",
        "/admin%2Fusers",
        "/./admin",
        "/%2e%2e/admin",
        "/public/..//admin/",
    ] {
        let status = raw_status(&n1.addrs, id, &req(&format!("GET {path}"))).await;
        assert_eq!(status, 403, "{path} got past the policy\n{}", wp.logs());
    }
    assert_eq!(v1.count("/admin") + v1.count("/%61"), 0, "{:?}", v1.seen());
    // An escape that does not decode is refused outright.
    assert_eq!(raw_status(&n1.addrs, id, &req("GET /%zz")).await, 400);
    // A dot segment with `;` parameters, which Tomcat-like servers resolve, is refused too.
    assert_eq!(
        raw_status(&n1.addrs, id, &req("GET /public/..;/admin")).await,
        400
    );

    // The denial says so.
    let mut c = {
        let tcp = connect_via(&n1.addrs, ip(id, 1, 1), vip_of(id))
            .await
            .unwrap();
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        send
    };
    let del = Request::delete("/x")
        .header("host", "web")
        .body(Full::default())
        .unwrap();
    let a = send(&mut c, del).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.text.contains("RBAC: access denied") && a.text.contains("default/no-delete"),
        "{}",
        a.text
    );
    let metrics = wp.metrics();
    assert!(
        metric_sum(
            &metrics,
            "weft_requests_total",
            &["response_code=\"403\"", "response_flags=\"RBAC\""]
        ) >= 11.0,
        "{metrics}"
    );

    // Straight to node2 with another identity, claiming to be `sleep`: the claim is ignored
    // (that identity is no waypoint of the namespace), and the ALLOW policy refuses it.
    let claim = |sa: &str| {
        let tls = m.client_tls(None, sa, "web-v1");
        async move {
            let target = SocketAddr::new(ip(id, 2, 1), 8080);
            let tcp = tokio::net::TcpStream::connect(SocketAddr::new(target.ip(), 15008))
                .await
                .unwrap();
            let s = tokio_rustls::TlsConnector::from(tls)
                .connect(
                    rustls_pki_types::ServerName::IpAddress(target.ip().into()),
                    tcp,
                )
                .await
                .unwrap();
            let (h2, conn) = h2::client::handshake(s).await.unwrap();
            tokio::spawn(conn);
            let mut h2 = h2.ready().await.unwrap();
            let req = Request::builder()
                .method(http::Method::CONNECT)
                .uri(target.to_string())
                .header(
                    weft_core::hbone::headers::ORIGINAL_PRINCIPAL,
                    "spiffe://cluster.local/ns/default/sa/sleep",
                )
                .body(())
                .unwrap();
            let (resp, _send) = h2.send_request(req, false).unwrap();
            resp.await.unwrap().status()
        }
    };
    assert_eq!(claim("intruder").await, StatusCode::UNAUTHORIZED);
    // `sleep` itself is allowed, with or without the header.
    assert_eq!(claim("sleep").await, StatusCode::OK);
}

/// Abuse from a client: each gets a clear answer or a closed connection, and the waypoint
/// keeps serving everyone else.
#[tokio::test(flavor = "multi_thread")]
async fn bad_http_is_refused_and_the_waypoint_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let id = 62;
    let mut m = topology(id);
    m.services[0]["ports"][0]["appProtocol"] = json!("http");
    let (n1, _n2) = m.start_both().unwrap();
    let wp = m.start_waypoint().unwrap();
    let _v1 = http_app(SocketAddr::new(ip(id, 2, 1), 8080), "web-v1")
        .await
        .unwrap();
    let _v2 = http_app(SocketAddr::new(ip(id, 2, 2), 8080), "web-v2")
        .await
        .unwrap();
    let ok = || async {
        let req = "GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n";
        raw_status(&n1.addrs, id, req).await
    };
    assert_eq!(ok().await, 200, "{}", wp.logs());

    // Not HTTP on an HTTP port, a broken header line, headers larger than the limit.
    assert_eq!(
        raw_status(&n1.addrs, id, "NOT HTTP AT ALL\r\n\r\n").await,
        400
    );
    let broken = "GET / HTTP/1.1\r\nhost: web\r\nno colon here\r\n\r\n";
    assert_eq!(raw_status(&n1.addrs, id, broken).await, 400);
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let status = raw_status(&n1.addrs, id, &huge).await;
    assert!(
        status == 431 || status == 0,
        "oversized headers got {status}"
    );
    assert_eq!(ok().await, 200);

    // HTTP/2 rapid reset: streams opened and reset at once, far past the server's limit. The
    // connection is closed; a new one is served.
    let tcp = connect_via(&n1.addrs, ip(id, 1, 1), vip_of(id))
        .await
        .unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let flood = async {
        let mut h2c = h2c;
        for _ in 0..5000 {
            h2c = h2c.ready().await?;
            let req = Request::get("http://web/").body(()).unwrap();
            let (_resp, mut send) = h2c.send_request(req, false)?;
            send.send_reset(h2::Reason::CANCEL);
        }
        Ok::<_, h2::Error>(())
    };
    let flooded = tokio::time::timeout(Duration::from_secs(30), flood).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        matches!(flooded, Ok(Err(_))) || matches!(closed, Ok(Ok(Err(_)))),
        "5000 reset streams were accepted: {flooded:?} {closed:?}"
    );
    assert_eq!(ok().await, 200, "{}", wp.logs());

    // A SETTINGS flood, never reading the acknowledgements: the waypoint stops reading that
    // connection (or closes it); others are served meanwhile.
    let mut tcp = connect_via(&n1.addrs, ip(id, 1, 1), vip_of(id))
        .await
        .unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let frame = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let frames: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 100_000)
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.write_all(&frames)).await;
    assert_eq!(ok().await, 200, "{}", wp.logs());
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut sink)).await;
    drop(tcp);
    assert_eq!(ok().await, 200);
    let ready = weft_tests::http(wp.monitoring, "GET", "/healthz/ready").unwrap();
    assert_eq!(ready.0, 200);
}
