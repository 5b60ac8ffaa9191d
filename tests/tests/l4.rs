//! The L4 data plane end to end: two weftd processes as two nodes on loopback, workloads as
//! real TCP servers and clients on their own loopback addresses, clients stating their
//! destination through the explicit (PROXY header) capture seam.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use weft_tests::traffic::{self, echo_server, expect_pattern, send_pattern};
use weft_tests::{
    Weftd, connect_via, echo_addr, echo_vip, eventually, ip, metric_sum, round_trip, sleep_echo,
};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn bulk_100_mib_each_way_with_half_close_both_directions() {
    let id = 11;
    let m = sleep_echo(id);
    let (n1, _n2) = m.start_both().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Result<()>>();

    // Client half-closes first: the server reads to EOF, only then answers.
    let t = tx.clone();
    let _a = traffic::serve(echo_addr(id), move |mut s| {
        let t = t.clone();
        async move {
            let r = async {
                expect_pattern(&mut s, 100 * MIB, 1).await?;
                send_pattern(&mut s, 100 * MIB, 2).await
            }
            .await;
            let _ = t.send(r);
        }
    })
    .await
    .unwrap();
    // Server half-closes first: the client reads to EOF, only then sends.
    let t = tx.clone();
    let _b = traffic::serve(SocketAddr::new(ip(id, 2, 1), 8081), move |mut s| {
        let t = t.clone();
        async move {
            let r = async {
                send_pattern(&mut s, 100 * MIB, 3).await?;
                expect_pattern(&mut s, 100 * MIB, 4).await
            }
            .await;
            let _ = t.send(r);
        }
    })
    .await
    .unwrap();

    let work = async {
        let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id)).await?;
        send_pattern(&mut c, 100 * MIB, 1).await?;
        expect_pattern(&mut c, 100 * MIB, 2).await?;
        let mut c =
            connect_via(&n1.addrs, ip(id, 1, 1), SocketAddr::new(ip(id, 2, 1), 8081)).await?;
        expect_pattern(&mut c, 100 * MIB, 3).await?;
        send_pattern(&mut c, 100 * MIB, 4).await?;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await?;
        anyhow::ensure!(rest.is_empty());
        Ok::<_, anyhow::Error>(())
    };
    timeout(Duration::from_secs(120), work)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        let server = timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        server.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_connections_share_two_hbone_connections() {
    let id = 12;
    let m = sleep_echo(id);
    let (n1, n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let mut tasks = Vec::new();
    // A watch, not a Notify: a task that reports in and only then starts waiting must still
    // see the release (notify_waiters wakes only those already waiting).
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(200);
    for i in 0..200 {
        let addrs = n1.addrs;
        let mut release = release.clone();
        let done = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect_via(&addrs, ip(id, 1, 1), echo_vip(id)).await?;
            round_trip(&mut c, format!("hello {i}\n").as_bytes()).await?;
            let _ = done.send(()).await;
            let _ = release.wait_for(|go| *go).await;
            round_trip(&mut c, b"bye\n").await
        }));
    }
    for _ in 0..200 {
        timeout(Duration::from_secs(30), done_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    // All 200 are open at once now.
    let dump = n1.config_dump().unwrap();
    let opened = dump["hbonePool"]["openedTotal"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&opened),
        "200 connections opened {opened} HBONE connections"
    );
    let open_now = metric_sum(
        &n2.metrics(),
        "weft_tcp_connections_opened_total",
        &["reporter=\"destination\""],
    );
    assert_eq!(open_now, 200.0);
    let _ = release_tx.send(true);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

fn deny_sleep_to_echo() -> serde_json::Value {
    json!({"name": "deny-sleep", "namespace": "default", "selector": {"matchLabels": {"app": "echo"}},
           "action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]})
}

/// The first connection to a peer waits for a new tunnel (TCP, TLS, HTTP/2). What the client
/// sends meanwhile goes out with the CONNECT; the rest follows it, in order, and the counters
/// include both.
#[tokio::test(flavor = "multi_thread")]
async fn data_sent_before_the_tunnel_is_up_arrives_whole_and_in_order() {
    let id = 31;
    let m = sleep_echo(id);
    let (n1, n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    const LEN: usize = 300 * 1024;
    // More than one read's worth, written (and half-closed) before anything is read back.
    send_pattern(&mut c, LEN, 7).await.unwrap();
    timeout(Duration::from_secs(10), expect_pattern(&mut c, LEN, 7))
        .await
        .expect("echo did not come back")
        .unwrap();
    for (node, reporter) in [
        (&n1, "reporter=\"source\""),
        (&n2, "reporter=\"destination\""),
    ] {
        let counted = eventually(Duration::from_secs(3), || {
            let t = node.metrics();
            metric_sum(&t, "weft_tcp_sent_bytes_total", &[reporter]) == LEN as f64
                && metric_sum(&t, "weft_tcp_received_bytes_total", &[reporter]) == LEN as f64
        })
        .await;
        assert!(counted, "{reporter}:\n{}", node.metrics());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_policy_closes_client_and_server_never_sees_it() {
    let id = 13;
    let mut m = sleep_echo(id);
    m.policies.push(deny_sleep_to_echo());
    let (n1, n2) = m.start_both().unwrap();
    let server = echo_server(echo_addr(id)).await.unwrap();
    let start = Instant::now();
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    let _ = c.write_all(b"should not arrive\n").await;
    let mut buf = [0u8; 64];
    let r = timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("client hung on a denied connection");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "denied connection delivered data: {r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "denial took {:?}",
        start.elapsed()
    );
    assert_eq!(server.accepted(), 0, "the server saw a denied connection");
    let denied = |w: &Weftd| {
        metric_sum(
            &w.metrics(),
            "weft_tcp_connections_failed_total",
            &["reason=\"denied\""],
        )
    };
    assert!(
        eventually(Duration::from_secs(2), || denied(&n2) >= 1.0).await,
        "{}",
        n2.metrics()
    );
    assert!(
        denied(&n1) >= 1.0,
        "the source node did not count the denial"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_change_closes_open_connection_within_one_second() {
    let id = 14;
    let mut m = sleep_echo(id);
    let (n1, _n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    round_trip(&mut c, b"before\n").await.unwrap();
    m.policies.push(deny_sleep_to_echo());
    let written = Instant::now();
    m.write().unwrap();
    let mut buf = [0u8; 64];
    let r = timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("connection still open 5 s after the DENY");
    let took = written.elapsed();
    assert!(matches!(r, Ok(0) | Err(_)), "read data after deny: {r:?}");
    assert!(
        took <= Duration::from_secs(1),
        "closing the denied connection took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_principals_and_mutual_tls_and_drop_removed_workloads() {
    let id = 17;
    let mut m = sleep_echo(id);
    let (n1, n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    round_trip(&mut c, b"0123456789").await.unwrap();
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    drop(c);
    let want = [
        "source_workload=\"sleep\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_workload=\"echo\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
        "destination_service=\"echo.default.svc.cluster.local\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    for (node, reporter) in [
        (&n1, "reporter=\"source\""),
        (&n2, "reporter=\"destination\""),
    ] {
        let mut labels = want.to_vec();
        labels.push(reporter);
        let ok = eventually(Duration::from_secs(3), || {
            let t = node.metrics();
            metric_sum(&t, "weft_tcp_connections_opened_total", &labels) == 1.0
                && metric_sum(&t, "weft_tcp_connections_closed_total", &labels) == 1.0
                && metric_sum(&t, "weft_tcp_received_bytes_total", &labels) == 10.0
                && metric_sum(&t, "weft_tcp_sent_bytes_total", &labels) == 10.0
        })
        .await;
        assert!(ok, "{reporter}:\n{}", node.metrics());
    }
    assert!(
        n2.logs().contains("connection complete"),
        "no access log line:\n{}",
        n2.logs()
    );
    // Remove the echo workload: its series go.
    m.workloads.retain(|w| w["name"] != "echo");
    m.write().unwrap();
    let gone = eventually(Duration::from_secs(3), || {
        !n2.metrics().contains("destination_workload=\"echo\"")
    })
    .await;
    assert!(gone, "series of a removed workload kept:\n{}", n2.metrics());
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_survives_certificate_renewals() {
    let id = 18;
    let mut m = sleep_echo(id);
    m.leaf_lifetime = "10s".into();
    let (n1, n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let expiry = |w: &Weftd| w.config_dump().unwrap()["certificates"][0]["notAfter"].clone();
    let first = (expiry(&n1), expiry(&n2));
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    let start = Instant::now();
    let mut renewals = 0;
    let mut last = first.clone();
    while start.elapsed() < Duration::from_secs(30) {
        round_trip(&mut c, b"still here\n")
            .await
            .expect("connection broke across a renewal");
        let now = (expiry(&n1), expiry(&n2));
        if now != last {
            renewals += 1;
            last = now;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        renewals >= 4,
        "certificates renewed only {renewals} times in 30 s with a 10 s lifetime"
    );
    // And new connections use the renewed certificates.
    let mut c2 = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    round_trip(&mut c2, b"new\n").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_mesh_edit_is_refused_and_traffic_keeps_flowing() {
    let id = 19;
    let m = sleep_echo(id);
    let (n1, _n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let mut open = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    round_trip(&mut open, b"before\n").await.unwrap();

    let mut bad = m.to_value();
    bad["services"][0]["ports"][0]["targetPort"] = json!(0);
    m.write_text(&serde_yaml_ng::to_string(&bad).unwrap())
        .unwrap();
    let refused = eventually(Duration::from_secs(3), || {
        n1.config_dump().unwrap()["config"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("services[0].ports[0].targetPort"))
    })
    .await;
    assert!(refused, "{}", n1.logs());
    assert!(n1.logs().contains("services[0].ports[0].targetPort"));
    // A syntax-level error names its path too.
    bad["services"][0]["ports"][0]["targetPort"] = json!("eighty");
    m.write_text(&serde_yaml_ng::to_string(&bad).unwrap())
        .unwrap();
    let refused = eventually(Duration::from_secs(3), || {
        n1.config_dump().unwrap()["config"]["refused"].as_u64() == Some(2)
    })
    .await;
    assert!(refused, "{}", n1.logs());
    assert!(
        n1.config_dump().unwrap()["config"]["lastError"]
            .as_str()
            .unwrap()
            .contains("services[0].ports[0].targetPort")
    );

    round_trip(&mut open, b"after\n").await.unwrap();
    let mut fresh = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    round_trip(&mut fresh, b"fresh\n").await.unwrap();
    assert_eq!(
        n1.config_dump().unwrap()["services"][0]["ports"][0]["targetPort"],
        json!(8080)
    );
}
