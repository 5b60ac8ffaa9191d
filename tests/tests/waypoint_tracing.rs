//! Request spans from the waypoint to an OTLP collector the test runs, on loopback: a W3C
//! trace and a B3 trace are continued (the backend sees the waypoint's span as its parent,
//! in the format it came in) and exported; an unsampled new trace is not.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use weft_tests::http_app::http_app;
use weft_tests::otlp::{collector, string_value};
use weft_tests::{Mesh, connect_via, eventually, ip};

const ID: u8 = 68;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_spans_reach_an_otlp_collector_with_w3c_and_b3_propagation() {
    let otlp = collector(SocketAddr::new(ip(ID, 4, 1), 4317))
        .await
        .unwrap();
    let mut m = Mesh::new(ID, 2).unwrap();
    m.nodes.push("node3".into());
    let pod = |name: &str, node: u8, host: u8, app: &str| {
        json!({"name": name, "namespace": "default", "serviceAccount": name,
               "ips": [ip(ID, node, host).to_string()], "node": format!("node{node}"),
               "labels": {"app": app}})
    };
    m.workloads.push(pod("sleep", 1, 1, "sleep"));
    m.workloads.push(pod("web", 2, 1, "web"));
    m.workloads.push(pod("waypoint", 3, 250, "waypoint"));
    m.services
        .push(json!({"name": "web", "vips": [ip(ID, 0, 100).to_string()],
        "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"},
        "waypoint": "waypoint"}));
    m.services.push(
        json!({"name": "waypoint", "vips": [ip(ID, 0, 110).to_string()],
        "ports": [{"port": 15008}], "selector": {"app": "waypoint"}}),
    );
    let (n1, _n2) = m.start_both().unwrap();
    let wp = m
        .start_waypoint_with(
            &[
                "--otlp-endpoint".into(),
                format!("http://{}", otlp.addr),
                "--trace-sampling".into(),
                "0".into(),
            ],
            &[],
        )
        .unwrap();
    let _web = http_app(SocketAddr::new(ip(ID, 2, 1), 8080), "web")
        .await
        .unwrap();
    let tcp = connect_via(&n1.addrs, ip(ID, 1, 1), SocketAddr::new(ip(ID, 0, 100), 80))
        .await
        .unwrap();
    let (mut c, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut send = async |headers: &[(&str, &str)]| -> Value {
        let mut b = Request::get("/traced").header("host", "web.default.svc.cluster.local");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        c.ready().await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.send_request(b.body(Full::default()).unwrap()),
        )
        .await
        .expect("an answer in time")
        .unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&bytes).unwrap()["headers"].clone()
    };

    // W3C, sampled by the client.
    let seen = send(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )])
    .await;
    let tp = seen["traceparent"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "{tp}");
    assert_eq!(parts[3], "01", "{tp}");
    assert!(
        eventually(Duration::from_secs(10), || !otlp.spans().is_empty()).await,
        "no span reached the collector\n{}",
        wp.logs()
    );
    let (resource, span) = otlp.spans()[0].clone();
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        hex(&span.span_id),
        parts[2],
        "the backend's parent is the waypoint's span"
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let attr = |k: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == k)
            .map(string_value)
            .unwrap_or_default()
    };
    assert_eq!(attr("http.request.method"), "GET");
    assert_eq!(attr("url.path"), "/traced");
    assert_eq!(attr("http.response.status_code"), "200");
    assert_eq!(attr("server.address"), "web.default.svc.cluster.local");
    assert_eq!(
        attr("weft.source.principal"),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert!(resource.contains(&("service.name".into(), "weft-waypoint".into())));

    // B3 single header, sampled: carried on in B3 and W3C, exported.
    let seen = send(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]).await;
    let b3 = seen["b3"].as_str().unwrap().to_owned();
    assert!(b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"), "{b3}");
    assert!(
        !b3.contains("e457b5a2e4d86bd1"),
        "the waypoint's own span: {b3}"
    );
    assert!(
        eventually(Duration::from_secs(10), || otlp.spans().len() == 2).await,
        "{} spans",
        otlp.spans().len()
    );
    let span = &otlp.spans()[1].1;
    assert_eq!(hex(&span.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(hex(&span.parent_span_id), "e457b5a2e4d86bd1");

    // A new trace at 0% sampling goes on unsampled, and no span is sent.
    let seen = send(&[]).await;
    assert!(seen["traceparent"].as_str().unwrap().ends_with("-00"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(otlp.spans().len(), 2, "an unsampled request was exported");
}
