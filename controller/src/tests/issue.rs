//! Issuing: who gets which certificate, and every refusal.

use super::*;

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

    // The controller's own identity, though its pod runs on node-a: never to a node agent.
    let controller_id = id("weft", "weft-controller");
    let (_, controller_csr) = new_request(&controller_id).unwrap();
    let s = refused(&c, controller_csr, Some(&controller_id), Some("weftd-a")).await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("control-plane"), "{s:?}");

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
