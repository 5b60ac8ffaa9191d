//! Real handshakes over an in-memory pipe: one test per refusal, so a regression names the
//! rule it broke.

use std::time::{Duration, SystemTime};

use rcgen::SanType;
use rustls::{CertificateError, Error as TlsError, ProtocolVersion};

use super::*;
use crate::identity::ca::IssuedCertificate;
use crate::identity::test_support::{
    TD, TestCa, handshake, id, ping_pong, self_signed_leaf, tls_error,
};
use crate::identity::verify::{TrustAnchors, VerifyError, connection_peer_identity};

const HOUR: Duration = Duration::from_secs(3600);

/// A server presenting `server_cert`, dialed by a client holding a good certificate for
/// `client` who expects `expected`; returns the client's error.
async fn client_refuses(
    ca: &TestCa,
    server_cert: &IssuedCertificate,
    expected: SpiffeId,
) -> TlsError {
    let roots = ca.roots();
    let client_cfg = client_config(&ca.issue(&id("client")), &roots, expected).unwrap();
    let server_cfg = server_config(server_cert, &roots, TD).unwrap();
    let (client, server) = handshake(client_cfg, server_cfg).await;
    assert!(server.is_err(), "server must see the aborted handshake");
    tls_error(&client.expect_err("client must refuse the server")).clone()
}

/// A client presenting `client_cert` (or none) to a good server; returns the server's error.
async fn server_refuses(ca: &TestCa, client_cfg: Arc<rustls::ClientConfig>) -> TlsError {
    let server_cfg = server_config(&ca.issue(&id("server")), &ca.roots(), TD).unwrap();
    let (_client, server) = handshake(client_cfg, server_cfg).await;
    tls_error(&server.expect_err("server must refuse the client")).clone()
}

fn identity_failure(e: &TlsError) -> &VerifyError {
    match e {
        TlsError::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<VerifyError>()
            .unwrap_or_else(|| panic!("not an identity failure: {e:?}")),
        _ => panic!("not an identity failure: {e:?}"),
    }
}

async fn assert_happy_path(ca: &TestCa) {
    let roots = ca.roots();
    let client_cert = ca.issue(&id("productpage"));
    let server_cert = ca.issue(&id("reviews"));
    let client_cfg = client_config(&client_cert, &roots, id("reviews")).unwrap();
    let server_cfg = server_config(&server_cert, &roots, TD).unwrap();
    let (client, server) = handshake(client_cfg, server_cfg).await;
    let (mut client, mut server) = (client.unwrap(), server.unwrap());

    let (_, c) = client.get_ref();
    let (_, s) = server.get_ref();
    assert_eq!(connection_peer_identity(c).unwrap(), id("reviews"));
    assert_eq!(connection_peer_identity(s).unwrap(), id("productpage"));
    assert_eq!(c.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(s.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    // Intermediates travel with the leaf so the peer can build the path to the root.
    assert_eq!(
        s.peer_certificates().unwrap().len(),
        1 + ca.intermediates.len()
    );
    ping_pong(&mut client, &mut server).await;
}

#[tokio::test]
async fn happy_path_both_sides_see_each_others_identity() {
    assert_happy_path(&TestCa::root()).await;
}

#[tokio::test]
async fn happy_path_through_an_intermediate_ca() {
    assert_happy_path(&TestCa::intermediate()).await;
}

#[tokio::test]
async fn client_refuses_server_with_other_identity() {
    let ca = TestCa::root();
    let err = client_refuses(&ca, &ca.issue(&id("b")), id("a")).await;
    assert!(
        matches!(identity_failure(&err), VerifyError::UnexpectedIdentity { expected, presented }
            if **expected == id("a") && **presented == id("b")),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_server_from_other_trust_domain() {
    let ca = TestCa::root();
    let foreign = SpiffeId::new("other.td", "default", "a").unwrap();
    let err = client_refuses(&ca, &ca.issue(&foreign), id("a")).await;
    assert!(
        matches!(
            identity_failure(&err),
            VerifyError::UnexpectedIdentity { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_client_from_other_trust_domain() {
    let ca = TestCa::root();
    let foreign = SpiffeId::new("other.td", "default", "client").unwrap();
    let cfg = client_config(&ca.issue(&foreign), &ca.roots(), id("server")).unwrap();
    let err = server_refuses(&ca, cfg).await;
    assert!(
        matches!(identity_failure(&err), VerifyError::ForeignTrustDomain { expected, .. }
            if expected == TD),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_expired_server_certificate() {
    let ca = TestCa::root();
    let now = SystemTime::now();
    let expired = ca
        .ca
        .issue_with_validity(&id("a"), now - 2 * HOUR, now - HOUR)
        .unwrap();
    let err = client_refuses(&ca, &expired, id("a")).await;
    assert!(
        matches!(
            err,
            TlsError::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_not_yet_valid_server_certificate() {
    let ca = TestCa::root();
    let now = SystemTime::now();
    let future = ca
        .ca
        .issue_with_validity(&id("a"), now + HOUR, now + 2 * HOUR)
        .unwrap();
    let err = client_refuses(&ca, &future, id("a")).await;
    assert!(
        matches!(
            err,
            TlsError::InvalidCertificate(CertificateError::NotValidYetContext { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_self_signed_server_certificate() {
    let ca = TestCa::root();
    let err = client_refuses(&ca, &self_signed_leaf(&id("a")), id("a")).await;
    assert_eq!(
        err,
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn client_refuses_server_certificate_without_spiffe_id() {
    let ca = TestCa::root();
    let dns_only = ca.issued_with_sans(vec![SanType::DnsName("a.example".try_into().unwrap())]);
    let err = client_refuses(&ca, &dns_only, id("a")).await;
    assert!(
        matches!(identity_failure(&err), VerifyError::NoSpiffeId),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_server_certificate_with_two_spiffe_ids() {
    let ca = TestCa::root();
    let uri = |sa: &str| SanType::URI(id(sa).to_string().try_into().unwrap());
    let two = ca.issued_with_sans(vec![uri("a"), uri("b")]);
    let err = client_refuses(&ca, &two, id("a")).await;
    assert!(
        matches!(identity_failure(&err), VerifyError::MultipleUriSans(2)),
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_client_certificate_from_other_ca() {
    let ca = TestCa::root();
    let other_ca = TestCa::root_named("some other root");
    // The client trusts our CA (so it accepts the server) but holds a foreign certificate.
    let cfg = client_config(&other_ca.issue(&id("client")), &ca.roots(), id("server")).unwrap();
    let err = server_refuses(&ca, cfg).await;
    assert_eq!(
        err,
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let ca = TestCa::root();
    let verifier = SpiffeServerVerifier::new(ca.roots(), id("server"));
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::identity::verify::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    let err = server_refuses(&ca, Arc::new(cfg)).await;
    assert_eq!(err, TlsError::NoCertificatesPresented);
}

#[tokio::test]
async fn server_refuses_expired_client_certificate() {
    let ca = TestCa::root();
    let now = SystemTime::now();
    let expired = ca
        .ca
        .issue_with_validity(&id("client"), now - 2 * HOUR, now - HOUR)
        .unwrap();
    let cfg = client_config(&expired, &ca.roots(), id("server")).unwrap();
    let err = server_refuses(&ca, cfg).await;
    assert!(
        matches!(
            err,
            TlsError::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{err}"
    );
}

#[test]
fn configs_disable_resumption_and_offer_h2() {
    let ca = TestCa::root();
    let cert = ca.issue(&id("a"));
    let roots: TrustAnchors = ca.roots();
    let server = server_config(&cert, &roots, TD).unwrap();
    assert_eq!(server.send_tls13_tickets, 0);
    assert!(!server.session_storage.can_cache());
    assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);

    let client = client_config(&cert, &roots, id("b")).unwrap();
    assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(client.client_auth_cert_resolver.has_certs());
    assert!(!client.enable_sni);
}

#[test]
fn server_config_refuses_invalid_trust_domain() {
    let ca = TestCa::root();
    let err = server_config(&ca.issue(&id("a")), &ca.roots(), "Bad TD").unwrap_err();
    assert!(matches!(err, VerifyError::TrustDomain(_)), "{err}");
}
