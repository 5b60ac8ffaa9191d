//! weft-waypoint as a process between a source and a destination node, on loopback: a client
//! holding the `sleep` identity CONNECTs to a service VIP at the waypoint (as weftd will once
//! it steers bound services there), the waypoint picks the endpoint and carries the stream
//! over HBONE with its own identity to the destination's weftd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use weft_core::identity::{self, CertificateAuthority};
use weft_tests::traffic::echo_server;
use weft_tests::{
    connect_via, echo_addr, echo_vip, ip, metric_sum, round_trip, sleep_echo, waypoint_addrs,
    workload,
};

const ID: u8 = 55;

fn hbone_addr(id: u8) -> SocketAddr {
    waypoint_addrs(id).0
}

/// One HBONE connection to the waypoint.
async fn connect(tls: Arc<rustls::ClientConfig>) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(hbone_addr(ID)).await?;
    let tls = TlsConnector::from(tls)
        .connect(ServerName::IpAddress(hbone_addr(ID).ip().into()), tcp)
        .await?;
    let (h2, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(conn);
    Ok(h2)
}

/// CONNECT `target`; Ok(stream halves) on 200, Err(Some(status)) for another answer,
/// Err(None) when the connection failed.
async fn open(
    h2: &mut h2::client::SendRequest<Bytes>,
    target: SocketAddr,
) -> Result<(h2::SendStream<Bytes>, h2::RecvStream), Option<StatusCode>> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header("forwarded", format!("for=\"{}:40000\"", ip(ID, 1, 1)))
        .body(())
        .unwrap();
    let mut ready = h2.clone().ready().await.map_err(|_| None)?;
    let (resp, send) = ready.send_request(req, false).map_err(|_| None)?;
    let resp = timeout(Duration::from_secs(10), resp)
        .await
        .map_err(|_| None)?
        .map_err(|_| None)?;
    *h2 = ready;
    if resp.status() == StatusCode::OK {
        Ok((send, resp.into_body()))
    } else {
        Err(Some(resp.status()))
    }
}

async fn echo_through(send: &mut h2::SendStream<Bytes>, recv: &mut h2::RecvStream, msg: &[u8]) {
    send.send_data(Bytes::copy_from_slice(msg), false).unwrap();
    let mut got = Vec::new();
    while got.len() < msg.len() {
        let chunk = timeout(Duration::from_secs(5), recv.data())
            .await
            .expect("echo in time")
            .expect("stream open")
            .unwrap();
        recv.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, msg);
}

/// Sends `data` in frames as the window allows while reading the echo back concurrently.
async fn bulk_through(send: &mut h2::SendStream<Bytes>, recv: &mut h2::RecvStream, data: &[u8]) {
    let writing = async {
        let mut rest = Bytes::copy_from_slice(data);
        while !rest.is_empty() {
            send.reserve_capacity(rest.len().min(1 << 20));
            let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .expect("stream open")
                .unwrap();
            if cap == 0 {
                tokio::task::yield_now().await;
                continue;
            }
            send.send_data(rest.split_to(cap.min(rest.len())), false)
                .unwrap();
        }
    };
    let reading = async {
        let mut got = Vec::with_capacity(data.len());
        while got.len() < data.len() {
            let chunk = recv.data().await.expect("stream open").unwrap();
            recv.flow_control().release_capacity(chunk.len()).unwrap();
            got.extend_from_slice(&chunk);
        }
        got
    };
    let ((), got) = timeout(Duration::from_secs(60), async {
        tokio::join!(writing, reading)
    })
    .await
    .expect("24 MiB through in time");
    assert!(got == data, "the bytes came back changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_waypoint_carries_a_bound_service_to_its_endpoint_with_its_own_identity() {
    let mut m = sleep_echo(ID);
    m.services[0]["waypoint"] = json!("waypoint");
    // Opaque TCP: the relay, not the HTTP layers (whose refusals come inside the tunnel).
    m.services[0]["ports"][0]["appProtocol"] = json!("tcp");
    // The same endpoint behind a service that is not bound to this waypoint.
    m.services.push(json!({"name": "unbound", "vips": [ip(ID, 0, 101).to_string()],
                          "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "echo"}}));
    // Bound, but with a policy attached that the waypoint cannot enforce yet.
    m.services.push(
        json!({"name": "guarded", "vips": [ip(ID, 0, 102).to_string()],
                          "ports": [{"port": 80, "targetPort": 8080, "appProtocol": "tcp"}],
                          "selector": {"app": "echo"}, "waypoint": "waypoint"}),
    );
    m.policies
        .push(json!({"name": "guarded-allow", "namespace": "default",
                          "targetRefs": [{"kind": "Service", "name": "guarded"}],
                          "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}));
    // Another namespace's service naming a waypoint of the same name.
    m.services
        .push(json!({"name": "elsewhere", "namespace": "other",
                          "vips": [ip(ID, 0, 103).to_string()],
                          "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "echo"},
                          "waypoint": "waypoint"}));
    m.write().unwrap();
    let n2 = m.start(2).unwrap();
    let wp = m.start_waypoint().unwrap();
    let _echo = echo_server(echo_addr(ID)).await.unwrap();

    let mut h2 = connect(m.client_tls(None, "sleep", "waypoint"))
        .await
        .unwrap();
    let (mut send, mut recv) = open(&mut h2, echo_vip(ID))
        .await
        .unwrap_or_else(|s| panic!("{s:?}\nwaypoint:\n{}\nnode2:\n{}", wp.logs(), n2.logs()));
    echo_through(&mut send, &mut recv, b"through the waypoint").await;
    // 24 MiB, more than every flow-control window on the way, read as it comes back.
    let big: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    bulk_through(&mut send, &mut recv, &big).await;
    // END_STREAM crosses both hops, and the echo's answer to it comes back.
    send.send_data(Bytes::new(), true).unwrap();
    let end = timeout(Duration::from_secs(5), async {
        loop {
            match recv.data().await {
                Some(Ok(b)) if b.is_empty() => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("end in time");
    assert!(end.is_none(), "expected the end of the stream, got {end:?}");

    // The destination node saw the waypoint as the source, over mutual TLS.
    let labels = [
        "reporter=\"destination\"",
        "connection_security_policy=\"mutual_tls\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
    ];
    let seen = || metric_sum(&n2.metrics(), "weft_tcp_connections_opened_total", &labels) >= 1.0;
    assert!(
        weft_tests::eventually(Duration::from_secs(5), seen).await,
        "{}",
        n2.metrics()
    );
    // The waypoint reports the original client and the service.
    let metrics = wp.metrics();
    let labels = [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_service=\"echo.default.svc.cluster.local\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
    ];
    assert_eq!(
        metric_sum(&metrics, "weft_tcp_connections_opened_total", &labels),
        1.0,
        "{metrics}"
    );

    // Refused: a service not bound to this waypoint, an address that is no service.
    assert_eq!(
        open(&mut h2, SocketAddr::new(ip(ID, 0, 101), 80))
            .await
            .err(),
        Some(Some(StatusCode::FORBIDDEN))
    );
    for vip in [ip(ID, 0, 102), ip(ID, 0, 103)] {
        assert_eq!(
            open(&mut h2, SocketAddr::new(vip, 80)).await.err(),
            Some(Some(StatusCode::FORBIDDEN)),
            "{vip}"
        );
    }
    assert_eq!(
        open(&mut h2, echo_addr(ID)).await.err(),
        Some(Some(StatusCode::BAD_REQUEST))
    );
    // A client from another CA never gets a stream.
    let (other_cert, other_key) =
        identity::generate_root("not the mesh root", Duration::from_secs(3600)).unwrap();
    let other = CertificateAuthority::from_pem(&other_cert, &other_key, None, None).unwrap();
    let foreign = async {
        let mut h2 = connect(m.client_tls(Some(&other), "sleep", "waypoint")).await?;
        let _stream = open(&mut h2, echo_vip(ID))
            .await
            .map_err(|s| anyhow::anyhow!("{s:?}"))?;
        Ok::<_, anyhow::Error>(())
    };
    assert!(
        timeout(Duration::from_secs(5), foreign)
            .await
            .unwrap()
            .is_err()
    );

    // Still serving; and an endpoint that goes away is a 503 for new connections, not a hang.
    let (mut send, mut recv) = open(&mut h2, echo_vip(ID)).await.unwrap();
    echo_through(&mut send, &mut recv, b"still here").await;
    drop(n2);
    // The open stream ends with its destination, it is not left hanging.
    let ended = timeout(Duration::from_secs(10), recv.data())
        .await
        .expect("the stream to end once the destination node is gone");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    drop(send);
    let refused = open(&mut h2, echo_vip(ID)).await.err();
    assert_eq!(
        refused,
        Some(Some(StatusCode::SERVICE_UNAVAILABLE)),
        "{}",
        wp.logs()
    );
}

/// The whole path: `sleep` connects to the bound service's VIP through node1's weftd, which
/// sends it over HBONE to the waypoint (`:authority` the VIP), which carries it to `echo` on
/// node2. Without a waypoint instance the connection is refused, never sent direct.
#[tokio::test(flavor = "multi_thread")]
async fn weftd_steers_a_bound_service_through_its_waypoint_and_fails_closed_without_one() {
    let id = 56;
    let mut m = sleep_echo(id);
    m.services[0]["waypoint"] = json!("waypoint");
    m.workloads
        .push(workload("waypoint", "waypoint", ip(id, 3, 250), "node3"));
    m.services.push(
        json!({"name": "waypoint", "vips": [ip(id, 0, 110).to_string()],
                          "ports": [{"port": 15008}], "selector": {"app": "waypoint"}}),
    );
    let (n1, n2) = m.start_both().unwrap();
    let wp = m.start_waypoint().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();

    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    round_trip(&mut c, b"sleep to echo, through the waypoint")
        .await
        .unwrap_or_else(|e| panic!("{e}\nnode1:\n{}\nwaypoint:\n{}", n1.logs(), wp.logs()));
    drop(c);
    let metrics = wp.metrics();
    let at_waypoint = [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
    ];
    assert_eq!(
        metric_sum(&metrics, "weft_tcp_connections_opened_total", &at_waypoint),
        1.0,
        "{metrics}"
    );
    // The destination node takes the waypoint's word on the original client (the tunnel is
    // this namespace's waypoint), so its metrics and policy see `sleep`.
    let at_destination = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "source_workload=\"sleep\"",
    ];
    let seen = || {
        metric_sum(
            &n2.metrics(),
            "weft_tcp_connections_opened_total",
            &at_destination,
        ) >= 1.0
    };
    assert!(
        weft_tests::eventually(Duration::from_secs(5), seen).await,
        "{}",
        n2.metrics()
    );

    // The waypoint's Service gone from the mesh: refused at node1, counted, never direct.
    m.services.retain(|s| s["name"] != "waypoint");
    m.write().unwrap();
    let reloaded = || n1.logs().matches("mesh state updated").count() >= 1;
    assert!(
        weft_tests::eventually(Duration::from_secs(5), reloaded).await,
        "{}",
        n1.logs()
    );
    let direct_before = metric_sum(
        &n2.metrics(),
        "weft_tcp_connections_opened_total",
        &["reporter=\"destination\""],
    );
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    assert!(
        round_trip(&mut c, b"must not arrive").await.is_err(),
        "a bound service was reached without its waypoint"
    );
    let refused = || {
        metric_sum(
            &n1.metrics(),
            "weft_tcp_connections_failed_total",
            &["reason=\"no_waypoint\""],
        ) >= 1.0
    };
    assert!(
        weft_tests::eventually(Duration::from_secs(5), refused).await,
        "{}",
        n1.metrics()
    );
    let direct_after = metric_sum(
        &n2.metrics(),
        "weft_tcp_connections_opened_total",
        &["reporter=\"destination\""],
    );
    assert_eq!(direct_before, direct_after, "node2 saw a connection");
}
