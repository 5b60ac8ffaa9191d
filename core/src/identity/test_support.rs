//! Test fixtures shared by the identity tests: throwaway CAs, hand-built bad leaves, and a
//! real TLS handshake over an in-memory pipe.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, IpAddr, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::bootstrap::{generate_intermediate, generate_root};
use super::ca::{CertificateAuthority, IssuedCertificate};
use super::spiffe::SpiffeId;
use super::verify::TrustAnchors;

pub(crate) const TD: &str = "cluster.local";

/// `spiffe://cluster.local/ns/default/sa/<sa>`
pub(crate) fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa).unwrap()
}

pub(crate) struct TestCa {
    pub ca: CertificateAuthority,
    pub cert_pem: String,
    pub key_pem: String,
    /// Intermediates sent after the leaf (empty for a root CA).
    pub intermediates: Vec<CertificateDer<'static>>,
}

impl TestCa {
    pub fn root() -> Self {
        Self::root_named("test root")
    }

    pub fn root_named(common_name: &str) -> Self {
        let (cert_pem, key_pem) = generate_root(common_name, Duration::from_secs(3600)).unwrap();
        let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem, None, None).unwrap();
        Self {
            ca,
            cert_pem,
            key_pem,
            intermediates: Vec::new(),
        }
    }

    /// An intermediate CA whose trust bundle is the root above it.
    pub fn intermediate() -> Self {
        let (root_pem, root_key) = generate_root("test root", Duration::from_secs(3600)).unwrap();
        let (cert_pem, key_pem) = generate_intermediate(
            &root_pem,
            &root_key,
            "test intermediate",
            Duration::from_secs(3600),
        )
        .unwrap();
        let ca =
            CertificateAuthority::from_pem(&cert_pem, &key_pem, None, Some(&root_pem)).unwrap();
        let intermediates = super::pem::certificates(&cert_pem, "t").unwrap();
        Self {
            ca,
            cert_pem,
            key_pem,
            intermediates,
        }
    }

    pub fn roots(&self) -> TrustAnchors {
        TrustAnchors::new(self.ca.trust_bundle()).unwrap()
    }

    pub fn issue(&self, id: &SpiffeId) -> IssuedCertificate {
        self.ca.issue(id, Duration::from_secs(3600)).unwrap()
    }

    /// A leaf signed by this CA with exactly the given SANs, for malformed-identity tests.
    pub fn leaf_with_sans(&self, sans: Vec<SanType>) -> (CertificateDer<'static>, KeyPair) {
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(&self.key_pem).unwrap())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = leaf_params(sans).signed_by(&key, &issuer).unwrap();
        (cert.der().clone(), key)
    }

    /// Like `leaf_with_sans`, packaged with this CA's chain so it can be served over TLS.
    pub fn issued_with_sans(&self, sans: Vec<SanType>) -> IssuedCertificate {
        let (leaf, key) = self.leaf_with_sans(sans);
        packaged(leaf, key, &self.intermediates)
    }
}

/// A self-signed leaf that looks like a workload certificate for `id` but has no CA behind it.
pub(crate) fn self_signed_leaf(id: &SpiffeId) -> IssuedCertificate {
    let key = KeyPair::generate().unwrap();
    let uri = SanType::URI(id.to_string().try_into().unwrap());
    let cert = leaf_params(vec![uri]).self_signed(&key).unwrap();
    packaged(cert.der().clone(), key, &[])
}

fn leaf_params(sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    params
}

fn packaged(
    leaf: CertificateDer<'static>,
    key: KeyPair,
    intermediates: &[CertificateDer<'static>],
) -> IssuedCertificate {
    let mut chain = vec![leaf];
    chain.extend(intermediates.iter().cloned());
    let now = std::time::SystemTime::now();
    IssuedCertificate {
        // Only the certificate bytes matter on the wire; this label is for the test's benefit.
        identity: id("unused"),
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_before: now,
        not_after: now + Duration::from_secs(3600),
    }
}

pub(crate) type ClientStream = client::TlsStream<DuplexStream>;
pub(crate) type ServerStream = server::TlsStream<DuplexStream>;

/// Runs a real TLS handshake between the two configs over an in-memory pipe.
pub(crate) async fn handshake(
    client_cfg: Arc<ClientConfig>,
    server_cfg: Arc<ServerConfig>,
) -> (io::Result<ClientStream>, io::Result<ServerStream>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    // Clients address peers by IP, as the mesh does.
    let name = ServerName::IpAddress(IpAddr::from(std::net::IpAddr::from([10, 0, 0, 1])));
    let connect = TlsConnector::from(client_cfg).connect(name, c);
    let accept = TlsAcceptor::from(server_cfg).accept(s);
    tokio::join!(connect, accept)
}

/// Sends a message each way, proving the session carries data.
pub(crate) async fn ping_pong(
    client: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
    server: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
) {
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

/// The rustls error inside a tokio-rustls I/O error.
pub(crate) fn tls_error(e: &io::Error) -> &rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {e:?}"))
}
