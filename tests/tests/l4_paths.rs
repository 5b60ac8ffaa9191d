//! The other paths through a node: sources that are not workloads, destinations outside the
//! mesh, load balancing, plaintext inbound, resets, same-node traffic, log level, drain.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use weft_tests::traffic::{self, echo_server};
use weft_tests::{
    Weftd, connect_via, echo_addr, eventually, http, ip, metric_sum, round_trip, sleep_echo,
    workload,
};

/// True when the peer closed or reset the connection within 3 s, without sending data.
async fn refused(tcp: &mut TcpStream) -> bool {
    let _ = tcp.write_all(b"x").await;
    let mut b = [0u8; 16];
    matches!(
        timeout(Duration::from_secs(3), tcp.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A server that answers every connection with its name.
async fn named_server(addr: SocketAddr, name: &'static str) -> traffic::Server {
    traffic::serve(addr, move |mut s| async move {
        let _ = s.write_all(name.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_source_is_refused_and_counted() {
    let id = 20;
    let m = sleep_echo(id);
    let (n1, _n2) = m.start_both().unwrap();
    let server = echo_server(echo_addr(id)).await.unwrap();
    let mut c = connect_via(
        &n1.addrs,
        ip(id, 1, 77),
        SocketAddr::new(ip(id, 0, 100), 80),
    )
    .await
    .unwrap();
    assert!(
        refused(&mut c).await,
        "a source that is no workload got through"
    );
    assert_eq!(server.accepted(), 0);
    let counted = eventually(Duration::from_secs(2), || {
        metric_sum(
            &n1.metrics(),
            "weft_tcp_connections_failed_total",
            &["reason=\"unknown_source\""],
        ) == 1.0
    })
    .await;
    assert!(counted, "{}", n1.metrics());
    assert!(n1.logs().contains("no workload of this node"));
}

#[tokio::test(flavor = "multi_thread")]
async fn destinations_outside_the_mesh_and_unmeshed_workloads_pass_through() {
    let id = 21;
    let mut m = sleep_echo(id);
    let mut legacy = workload("legacy", "legacy", ip(id, 2, 9), "node2");
    legacy["mode"] = json!("none");
    m.workloads.push(legacy);
    let (n1, _n2) = m.start_both().unwrap();
    let _outside = echo_server(SocketAddr::new(ip(id, 9, 1), 9000))
        .await
        .unwrap();
    let _legacy = echo_server(SocketAddr::new(ip(id, 2, 9), 5432))
        .await
        .unwrap();
    for dst in [
        SocketAddr::new(ip(id, 9, 1), 9000),
        SocketAddr::new(ip(id, 2, 9), 5432),
    ] {
        let mut c = connect_via(&n1.addrs, ip(id, 1, 1), dst).await.unwrap();
        round_trip(&mut c, b"plain\n").await.unwrap();
    }
    let t = n1.metrics();
    assert_eq!(
        metric_sum(
            &t,
            "weft_tcp_connections_opened_total",
            &[
                "connection_security_policy=\"none\"",
                "source_workload=\"sleep\""
            ]
        ),
        2.0,
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weftd_never_dials_itself() {
    let id = 30;
    let mut m = sleep_echo(id);
    let mut open = workload("open", "open", ip(id, 2, 2), "node2");
    open["inbound"] = json!("permissive");
    m.workloads.push(open);
    let (n1, n2) = m.start_both().unwrap();
    // A workload asking for its node's admin API, or for another node's mesh listeners.
    for dst in [
        n1.addrs.admin,
        n1.addrs.outbound,
        SocketAddr::new(ip(id, 2, 2), 15006),
    ] {
        let mut c = connect_via(&n1.addrs, ip(id, 1, 1), dst).await.unwrap();
        assert!(refused(&mut c).await, "weftd dialled {dst} for a workload");
    }
    // A plaintext client naming another workload than the one whose address it reached.
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip(id, 9, 9), 0)).unwrap();
    let mut c = sock
        .connect(SocketAddr::new(ip(id, 2, 2), 15006))
        .await
        .unwrap();
    let l = c.local_addr().unwrap();
    let h = format!(
        "PROXY TCP4 {} {} {} 8080\r\n",
        l.ip(),
        ip(id, 2, 1),
        l.port()
    );
    c.write_all(h.as_bytes()).await.unwrap();
    assert!(
        refused(&mut c).await,
        "plaintext listener of one workload forwarded to another"
    );
    assert!(
        n1.logs()
            .contains("refused outbound connection to a listener of weftd itself"),
        "{}",
        n1.logs()
    );
    assert!(
        n2.logs().contains("naming another destination"),
        "{}",
        n2.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_spreads_connections_over_its_endpoints() {
    let id = 22;
    let mut m = sleep_echo(id);
    m.workloads
        .push(workload("echo-b", "echo", ip(id, 2, 2), "node2"));
    m.workloads.last_mut().unwrap()["labels"] = json!({"app": "echo"});
    let (n1, _n2) = m.start_both().unwrap();
    let _a = named_server(echo_addr(id), "a").await;
    let _b = named_server(SocketAddr::new(ip(id, 2, 2), 8080), "b").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut c = connect_via(&n1.addrs, ip(id, 1, 1), SocketAddr::new(ip(id, 0, 100), 80))
            .await
            .unwrap();
        let mut out = String::new();
        timeout(Duration::from_secs(5), c.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        seen.push(out);
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);
}

async fn plaintext_client(id: u8, dst: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip(id, 9, 9), 0)).unwrap();
    let mut tcp = sock
        .connect(SocketAddr::new(dst.ip(), 15006))
        .await
        .unwrap();
    let local = tcp.local_addr().unwrap();
    let h = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        local.ip(),
        dst.ip(),
        local.port(),
        dst.port()
    );
    tcp.write_all(h.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_inbound_only_for_permissive_workloads_that_policy_allows() {
    let id = 23;
    let mut m = sleep_echo(id);
    let mut open = workload("open", "open", ip(id, 2, 2), "node2");
    open["inbound"] = json!("permissive");
    m.workloads.push(open);
    let mut guarded = workload("guarded", "guarded", ip(id, 2, 3), "node2");
    guarded["inbound"] = json!("permissive");
    m.workloads.push(guarded);
    m.policies
        .push(json!({"name": "guarded-mesh-only", "namespace": "default",
        "selector": {"matchLabels": {"app": "guarded"}},
        "rules": [{"from": [{"source": {"principals": ["*"]}}]}]}));
    let (_n1, n2) = m.start_both().unwrap();
    let strict = echo_server(echo_addr(id)).await.unwrap();
    let _open = echo_server(SocketAddr::new(ip(id, 2, 2), 8080))
        .await
        .unwrap();
    let guarded = echo_server(SocketAddr::new(ip(id, 2, 3), 8080))
        .await
        .unwrap();

    let mut c = plaintext_client(id, echo_addr(id)).await;
    assert!(refused(&mut c).await, "STRICT workload accepted plaintext");
    let mut c = plaintext_client(id, SocketAddr::new(ip(id, 2, 2), 8080)).await;
    round_trip(&mut c, b"hi\n").await.unwrap();
    let mut c = plaintext_client(id, SocketAddr::new(ip(id, 2, 3), 8080)).await;
    assert!(
        refused(&mut c).await,
        "policy requiring a principal let plaintext through"
    );
    assert_eq!(strict.accepted() + guarded.accepted(), 0);
    let t = n2.metrics();
    assert_eq!(
        metric_sum(
            &t,
            "weft_tcp_connections_failed_total",
            &["reason=\"plaintext_refused\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric_sum(
            &t,
            "weft_tcp_connections_failed_total",
            &["reason=\"denied\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric_sum(
            &t,
            "weft_tcp_connections_opened_total",
            &[
                "connection_security_policy=\"none\"",
                "destination_workload=\"open\""
            ]
        ),
        1.0,
        "{t}"
    );
}

fn reset_on_close(tcp: &TcpStream) {
    socket2::SockRef::from(tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn resets_propagate_both_ways() {
    let id = 24;
    let m = sleep_echo(id);
    let (n1, _n2) = m.start_both().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Port 8080: the server reports how its read ended. Port 8081: the server resets at once.
    let _watch = traffic::serve(echo_addr(id), move |mut s| {
        let tx = tx.clone();
        async move {
            let mut b = [0u8; 64];
            let _ = s.read(&mut b).await;
            let r = s.read(&mut b).await;
            let _ = tx.send(r.map_err(|e| e.kind()));
        }
    })
    .await
    .unwrap();
    let _resetter = traffic::serve(SocketAddr::new(ip(id, 2, 1), 8081), |s| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        reset_on_close(&s);
        drop(s);
    })
    .await
    .unwrap();

    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), SocketAddr::new(ip(id, 0, 100), 80))
        .await
        .unwrap();
    c.write_all(b"hello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    reset_on_close(&c);
    drop(c);
    let server_saw = timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        server_saw,
        Err(std::io::ErrorKind::ConnectionReset),
        "client reset reached the server as {server_saw:?}"
    );

    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), SocketAddr::new(ip(id, 2, 1), 8081))
        .await
        .unwrap();
    let mut b = [0u8; 16];
    let r = timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap();
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "server reset reached the client as a FIN"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_node_traffic_is_mutual_tls() {
    let id = 25;
    let mut m = sleep_echo(id);
    m.workloads
        .push(workload("local", "local", ip(id, 1, 2), "node1"));
    let (n1, _n2) = m.start_both().unwrap();
    let _local = echo_server(SocketAddr::new(ip(id, 1, 2), 7000))
        .await
        .unwrap();
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), SocketAddr::new(ip(id, 1, 2), 7000))
        .await
        .unwrap();
    round_trip(&mut c, b"next door\n").await.unwrap();
    let t = n1.metrics();
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        let labels = [
            reporter,
            "connection_security_policy=\"mutual_tls\"",
            "destination_principal=\"spiffe://cluster.local/ns/default/sa/local\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        ];
        assert_eq!(
            metric_sum(&t, "weft_tcp_connections_opened_total", &labels),
            1.0,
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn log_level_changes_at_run_time() {
    let id = 26;
    let m = sleep_echo(id);
    let (n1, _n2) = m.start_both().unwrap();
    assert_eq!(
        http(n1.addrs.admin, "POST", "/logging?level=debug")
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        http(n1.addrs.admin, "GET", "/logging").unwrap(),
        (200, "level=debug\n".to_string())
    );
    let (status, body) = http(n1.addrs.admin, "POST", "/logging?level=weft%3Dnotalevel").unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        http(n1.addrs.admin, "GET", "/logging").unwrap().1,
        "level=debug\n"
    );
    // The admin surface is not on the metrics port.
    assert_eq!(
        http(n1.addrs.metrics, "GET", "/config_dump").unwrap().0,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_accepting_drains_then_closes() {
    let id = 27;
    let m = sleep_echo(id);
    let (mut n1, _n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let vip = SocketAddr::new(ip(id, 0, 100), 80);
    let mut open = connect_via(&n1.addrs, ip(id, 1, 1), vip).await.unwrap();
    round_trip(&mut open, b"one\n").await.unwrap();
    let pid = n1.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections...
    let addr: IpAddr = ip(id, 1, 1);
    assert!(
        connect_via(&n1.addrs, addr, vip).await.is_err(),
        "weftd accepted a connection while draining"
    );
    // ...but the open one keeps working during the drain period (2 s in these tests)...
    round_trip(&mut open, b"two\n").await.unwrap();
    // ...and is closed when it ends; weftd exits cleanly.
    let mut b = [0u8; 8];
    let r = timeout(Duration::from_secs(6), open.read(&mut b))
        .await
        .expect("connection outlived the drain");
    assert!(matches!(r, Ok(0) | Err(_)));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    let status = n1.terminate(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "weftd exited with {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_hbone_connections_are_closed() {
    let id = 28;
    let mut m = sleep_echo(id);
    m.hbone = json!({"idleTimeout": "1s"});
    let (n1, _n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let pool = |w: &Weftd| {
        w.config_dump().unwrap()["hbonePool"]["connections"]
            .as_u64()
            .unwrap()
    };
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), SocketAddr::new(ip(id, 0, 100), 80))
        .await
        .unwrap();
    round_trip(&mut c, b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pool(&n1),
        1,
        "a connection with an open stream was closed as idle"
    );
    drop(c);
    assert!(
        eventually(Duration::from_secs(3), || pool(&n1) == 0).await,
        "idle HBONE connection kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_detects_a_peer_that_stops_answering() {
    let id = 29;
    let mut m = sleep_echo(id);
    m.hbone = json!({"keepaliveInterval": "300ms", "keepaliveTimeout": "300ms"});
    let (n1, n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let vip = SocketAddr::new(ip(id, 0, 100), 80);
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), vip).await.unwrap();
    round_trip(&mut c, b"x").await.unwrap();
    n2.freeze(true);
    let frozen = Instant::now();
    let mut b = [0u8; 8];
    let r = timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("client hung on a dead peer");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(
        frozen.elapsed() < Duration::from_secs(2),
        "dead peer noticed after {:?}",
        frozen.elapsed()
    );
    assert!(n1.logs().contains("no PING answer"), "{}", n1.logs());
    n2.freeze(false);
    // A fresh tunnel replaces the dead one.
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), vip).await.unwrap();
    round_trip(&mut c, b"back\n").await.unwrap();
    assert_eq!(
        n1.config_dump().unwrap()["hbonePool"]["openedTotal"],
        json!(2)
    );
}
