//! TrafficPolicy at the waypoint, on loopback: clients on node1 reach Services bound to the
//! waypoint (node3), which sends to endpoints on node2 through node2's weftd. Rate limits,
//! faults, circuit breaking and pool settings (one test); balancing and outlier ejection
//! (the other). Every figure is counted from what the client and the servers saw.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use weft_tests::http_app::{Answer, HttpApp, http_app, send};
use weft_tests::{Mesh, NodeAddrs, connect_via, eventually, ip, metric_sum};

const POLICY_ID: u8 = 66;
const BALANCE_ID: u8 = 67;

fn pod(id: u8, name: &str, node: u8, host: u8, labels: Value) -> Value {
    json!({"name": name, "namespace": "default", "serviceAccount": name,
           "ips": [ip(id, node, host).to_string()], "node": format!("node{node}"),
           "labels": labels})
}

/// A Service on port 80 (target 8080) bound to the waypoint.
fn bound(id: u8, name: &str, host: u8, selector: Value) -> Value {
    json!({"name": name, "vips": [ip(id, 0, host).to_string()],
           "ports": [{"port": 80, "targetPort": 8080}], "selector": selector,
           "waypoint": "waypoint"})
}

fn policy(name: &str, service: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["targetRefs"] = json!([{"group": "", "kind": "Service", "name": service}]);
    json!({"name": name, "namespace": "default", "spec": spec})
}

/// node1 and node2 with weftd, the waypoint's workload and Service on node3.
fn mesh(id: u8) -> Mesh {
    let mut m = Mesh::new(id, 2).unwrap();
    m.nodes.push("node3".into());
    m.workloads
        .push(pod(id, "waypoint", 3, 250, json!({"app": "waypoint"})));
    m.services.push(
        json!({"name": "waypoint", "vips": [ip(id, 0, 110).to_string()],
               "ports": [{"port": 15008}], "selector": {"app": "waypoint"}}),
    );
    m
}

type H1 = http1::SendRequest<Full<Bytes>>;

async fn h1(node: &NodeAddrs, src: std::net::IpAddr, vip: SocketAddr) -> H1 {
    let tcp = connect_via(node, src, vip).await.unwrap();
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    send
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header("host", "svc.default.svc.cluster.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `n` requests at once, each on its own client connection.
async fn at_once(
    node: &NodeAddrs,
    src: std::net::IpAddr,
    vip: SocketAddr,
    n: usize,
    path: &str,
) -> Vec<Answer> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(h1(node, src, vip).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let path = path.to_owned();
            tokio::spawn(async move { send(&mut c, get(&path, &[])).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_faults_and_circuit_breakers_through_the_waypoint() {
    let id = POLICY_ID;
    let mut m = mesh(id);
    m.workloads
        .push(pod(id, "sleep", 1, 1, json!({"app": "sleep"})));
    m.workloads
        .push(pod(id, "other", 1, 2, json!({"app": "other"})));
    m.workloads
        .push(pod(id, "web", 2, 1, json!({"app": "web"})));
    m.workloads
        .push(pod(id, "api", 2, 2, json!({"app": "api"})));
    m.workloads
        .push(pod(id, "api2", 2, 3, json!({"app": "api2"})));
    m.services
        .push(bound(id, "web", 100, json!({"app": "web"})));
    m.services
        .push(bound(id, "api", 103, json!({"app": "api"})));
    m.services
        .push(bound(id, "api2", 104, json!({"app": "api2"})));
    let web_route = |name: &str, prefix: Option<&str>| {
        let matches = match prefix {
            Some(p) => json!([{"path": {"type": "PathPrefix", "value": p}}]),
            None => json!([]),
        };
        json!({"name": name, "namespace": "default",
               "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
               "rules": [{"matches": matches, "backendRefs": [{"name": "web", "port": 80}]}]})
    };
    m.routes.push(web_route("burst", Some("/burst")));
    m.routes.push(web_route("limited", Some("/limited")));
    m.routes.push(web_route("web", None));
    // api2 retries 503s: its own circuit breaker's 503s must still not be retried.
    m.routes.push(json!({"name": "api2", "namespace": "default",
        "parentRefs": [{"group": "", "kind": "Service", "name": "api2"}],
        "rules": [{"backendRefs": [{"name": "api2", "port": 80}],
                   "retry": {"codes": [503], "attempts": 2, "backoff": "5ms"}}]}));
    let on = |v: &str| json!({"headers": [{"name": "x-fault", "value": v}]});
    m.traffic_policies.push(policy(
        "web-policy",
        "web",
        json!({
            "faults": [
                {"match": on("abort"), "abort": {"httpStatus": 503, "percentage": 30}},
                {"match": on("delay"), "delay": {"fixedDelay": "20ms", "percentage": 30}},
                {"match": on("slow"), "delay": {"fixedDelay": "300ms"}},
                {"match": on("grpc"), "abort": {"grpcStatus": "UNAVAILABLE"}},
            ],
            "rateLimits": [
                {"maxTokens": 5, "fillInterval": "1h", "routes": ["burst"]},
                {"maxTokens": 20, "fillInterval": "1h", "routes": ["limited"], "perSource": true},
            ],
        }),
    ));
    m.traffic_policies.push(policy(
        "api-pool",
        "api",
        json!({"connectionPool": {"maxConnections": 1, "maxPendingRequests": 1}}),
    ));
    m.traffic_policies.push(policy(
        "api2-pool",
        "api2",
        json!({"connectionPool": {"maxRequests": 2, "maxRequestsPerConnection": 2,
                                  "idleTimeout": "500ms"}}),
    ));
    let (n1, _n2) = m.start_both().unwrap();
    let wp = m.start_waypoint().unwrap();
    let app = |host, name| http_app(SocketAddr::new(ip(id, 2, host), 8080), name);
    let _web = app(1, "web").await.unwrap();
    let _api = app(2, "api").await.unwrap();
    let api2 = app(3, "api2").await.unwrap();
    let (sleep, other) = (ip(id, 1, 1), ip(id, 1, 2));
    let vip = |host| SocketAddr::new(ip(id, 0, host), 80);
    let mut c = h1(&n1.addrs, sleep, vip(100)).await;

    // Abort on 30% of matching requests, over 1000; the others reach the server.
    let mut aborted = 0;
    for i in 0..1000 {
        let a = send(&mut c, get("/", &[("x-fault", "abort")])).await;
        match a.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(a.text.contains("fault filter abort"), "{}", a.text);
                aborted += 1;
            }
            StatusCode::OK => assert_eq!(a.server(), "web"),
            s => panic!("request {i}: {s} {}\n{}", a.text, wp.logs()),
        }
    }
    assert!(
        (250..=350).contains(&aborted),
        "{aborted} of 1000 aborted, expected 300 +- 50"
    );
    // Delay on 30%: counted by the waypoint's response flags; a 100% delay is felt.
    for _ in 0..1000 {
        let a = send(&mut c, get("/", &[("x-fault", "delay")])).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let t = Instant::now();
    let a = send(&mut c, get("/", &[("x-fault", "slow")])).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let metrics = wp.metrics();
    let flagged = |flag: &str| {
        metric_sum(
            &metrics,
            "weft_requests_total",
            &[
                &format!("response_flags=\"{flag}\""),
                "destination_service=\"web.default.svc.cluster.local\"",
            ],
        )
    };
    let delayed = flagged("DI") - 1.0;
    assert!(
        (250.0..=350.0).contains(&delayed),
        "{delayed} of 1000 delayed, expected 300 +- 50\n{metrics}"
    );
    assert_eq!(flagged("FI"), aborted as f64, "{metrics}");
    // A gRPC status abort: trailers-only, as gRPC clients read it.
    let a = send(&mut c, get("/", &[("x-fault", "grpc")])).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(header(&a, "grpc-status"), "14");

    // Per source on the `limited` route: sleep's 20 tokens, then 429; other has its own.
    for i in 0..20 {
        let a = send(&mut c, get("/limited", &[])).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {}", a.text);
        assert_eq!(header(&a, "x-ratelimit-limit"), "20");
        assert_eq!(header(&a, "x-ratelimit-remaining"), (19 - i).to_string());
    }
    let a = send(&mut c, get("/limited", &[])).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
    assert_eq!(header(&a, "x-ratelimit-remaining"), "0");
    let retry_after: u64 = header(&a, "retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    let mut o = h1(&n1.addrs, other, vip(100)).await;
    for _ in 0..5 {
        assert_eq!(
            send(&mut o, get("/limited", &[])).await.status,
            StatusCode::OK
        );
    }
    // The `burst` limit is shared: five for everyone. Other routes are not limited.
    for _ in 0..5 {
        assert_eq!(
            send(&mut c, get("/burst", &[])).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&mut o, get("/burst", &[])).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&mut c, get("/", &[])).await.status, StatusCode::OK);

    // api: one busy connection, one request waiting; a third at once is refused.
    let answers = at_once(&n1.addrs, sleep, vip(103), 3, "/sleep/1000").await;
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "{:?}",
        answers.iter().map(|a| &a.text).collect::<Vec<_>>()
    );
    assert!(
        refused[0].text.contains("maxPendingRequests"),
        "{}",
        refused[0].text
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .count(),
        2
    );
    let mut api = h1(&n1.addrs, sleep, vip(103)).await;
    assert_eq!(
        send(&mut api, get("/", &[])).await.status,
        StatusCode::OK,
        "released"
    );

    // api2: two requests in flight at most.
    let answers = at_once(&n1.addrs, sleep, vip(104), 3, "/sleep/1000").await;
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].text.contains("maxRequests (2)"),
        "{}",
        refused[0].text
    );
    let metrics = wp.metrics();
    assert!(
        metric_sum(&metrics, "weft_requests_total", &["response_flags=\"UO\""]) >= 2.0,
        "{metrics}"
    );
    // The overflow was answered at once, not retried into the full circuit until the
    // retries ran out.
    assert_eq!(
        metric_sum(
            &metrics,
            "weft_requests_total",
            &["response_flags=\"UO,URX\""]
        ),
        0.0,
        "{metrics}"
    );
    // Idle upstream connections are closed after 500ms; then two requests per connection.
    assert!(
        eventually(Duration::from_secs(5), || api2.connections().1 == 0).await,
        "idle upstream connections are closed: {:?}",
        api2.connections()
    );
    let (before, _) = api2.connections();
    let mut c2 = h1(&n1.addrs, sleep, vip(104)).await;
    for _ in 0..6 {
        assert_eq!(send(&mut c2, get("/", &[])).await.status, StatusCode::OK);
    }
    let (after, _) = api2.connections();
    assert_eq!(after - before, 3, "six requests, two per connection");

    // The compiled policies are shown; a mistaken one is refused with its field and the
    // last good policies stay in force.
    let dump = wp.config_dump().unwrap();
    let shown: Vec<&str> = dump["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["service"].as_str())
        .collect();
    assert_eq!(shown, ["default/api", "default/api2", "default/web"]);
    m.traffic_policies[0]["spec"]["rateLimits"][0]["fillInterval"] = json!("soon");
    m.write().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || wp
            .logs()
            .contains("trafficPolicies[0].spec.rateLimits[0].fillInterval"))
        .await,
        "{}",
        wp.logs()
    );
    assert_eq!(
        send(&mut c, get("/burst", &[])).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the last good limit, its bucket still spent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_are_balanced_by_latency_hashed_ejected_and_readmitted() {
    let id = BALANCE_ID;
    let mut m = mesh(id);
    m.workloads
        .push(pod(id, "sleep", 1, 1, json!({"app": "sleep"})));
    m.workloads
        .push(pod(id, "fast", 2, 1, json!({"app": "web"})));
    m.workloads
        .push(pod(id, "slow", 2, 2, json!({"app": "web"})));
    m.workloads
        .push(pod(id, "flaky-a", 2, 3, json!({"app": "flaky"})));
    m.workloads
        .push(pod(id, "flaky-b", 2, 4, json!({"app": "flaky"})));
    m.services
        .push(bound(id, "web", 100, json!({"app": "web"})));
    m.services.push(bound(id, "rr", 101, json!({"app": "web"})));
    m.services
        .push(bound(id, "sticky", 102, json!({"app": "web"})));
    m.services
        .push(bound(id, "flaky", 103, json!({"app": "flaky"})));
    m.traffic_policies.push(policy(
        "rr",
        "rr",
        json!({"loadBalancer": {"type": "RoundRobin"}}),
    ));
    m.traffic_policies.push(policy(
        "sticky",
        "sticky",
        json!({"loadBalancer": {"type": "ConsistentHash",
                                "consistentHash": {"httpHeaderName": "x-user"}}}),
    ));
    m.traffic_policies.push(policy(
        "flaky",
        "flaky",
        // Round robin, so that both endpoints are tried: under P2C a quiet endpoint is left
        // alone while the other answers faster than its first estimate.
        json!({"loadBalancer": {"type": "RoundRobin"},
               "outlierDetection": {"consecutive5xxErrors": 3, "baseEjectionTime": "3s",
                                    "maxEjectionPercent": 50}}),
    ));
    let (n1, _n2) = m.start_both().unwrap();
    let wp = m.start_waypoint().unwrap();
    let app = |host, name| http_app(SocketAddr::new(ip(id, 2, host), 8080), name);
    let _fast = app(1, "fast").await.unwrap();
    let slow = app(2, "slow").await.unwrap();
    slow.set_delay(Duration::from_millis(30));
    let flaky_a: HttpApp = app(3, "flaky-a").await.unwrap();
    let _flaky_b = app(4, "flaky-b").await.unwrap();
    let sleep = ip(id, 1, 1);
    let vip = |host| SocketAddr::new(ip(id, 0, host), 80);

    // Four clients at once, 75 requests each: the share the slow endpoint gets.
    let slow_share = |host: u8| {
        let addrs = n1.addrs;
        async move {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let mut c = h1(&addrs, sleep, vip(host)).await;
                tasks.push(tokio::spawn(async move {
                    let mut slow = 0;
                    for _ in 0..75 {
                        let a = send(&mut c, get("/", &[])).await;
                        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
                        slow += usize::from(a.server() == "slow");
                    }
                    slow
                }));
            }
            let mut n = 0;
            for t in tasks {
                n += t.await.unwrap();
            }
            n
        }
    };
    let p2c = slow_share(100).await;
    let rr = slow_share(101).await;
    assert!(
        p2c < 45,
        "P2C sent {p2c} of 300 to the slow endpoint\n{}",
        wp.logs()
    );
    assert!(
        (120..=180).contains(&rr),
        "round robin sent {rr} of 300 to it"
    );

    // One key, one endpoint; the keys spread over both.
    let mut c = h1(&n1.addrs, sleep, vip(102)).await;
    let mut servers = std::collections::BTreeSet::new();
    for user in 0..20 {
        let key = format!("user-{user}");
        let first = send(&mut c, get("/", &[("x-user", &key)]))
            .await
            .server()
            .to_owned();
        for _ in 0..4 {
            assert_eq!(
                send(&mut c, get("/", &[("x-user", &key)])).await.server(),
                first,
                "{key}"
            );
        }
        servers.insert(first);
    }
    assert_eq!(servers.len(), 2, "{servers:?}");

    // flaky-a fails: ejected after 3 consecutive 503s, flaky-b takes everything.
    flaky_a.set_failing(true);
    let mut c = h1(&n1.addrs, sleep, vip(103)).await;
    let mut failed = 0;
    for _ in 0..40 {
        let a = send(&mut c, get("/", &[])).await;
        if a.status != StatusCode::OK {
            failed += 1;
        }
    }
    assert_eq!(failed, 3, "three failures eject it\n{}", wp.logs());
    let seen = flaky_a.seen().len();
    for _ in 0..20 {
        let a = send(&mut c, get("/", &[])).await;
        assert_eq!((a.status, a.server()), (StatusCode::OK, "flaky-b"));
    }
    assert_eq!(
        flaky_a.seen().len(),
        seen,
        "nothing reaches an ejected endpoint"
    );
    // Healed, it comes back once its 3s are up.
    flaky_a.set_failing(false);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for _ in 0..40 {
        assert_eq!(send(&mut c, get("/", &[])).await.status, StatusCode::OK);
    }
    assert!(flaky_a.seen().len() > seen, "readmitted\n{}", wp.logs());
}
