//! Peer certificate verification for mesh mTLS, following Istio's HBONE rules.
//!
//! Web PKI verifiers answer "is this certificate valid for this host name"; the mesh needs
//! "is this certificate from our CA, and which workload does it speak for". So the chain is
//! checked with webpki against our own trust bundle, and the name check is replaced by a
//! SPIFFE identity check: the client pins the exact identity it expects (from service
//! discovery), the server accepts any identity in its trust domain and leaves the "may this
//! identity talk to me" question to authorization policy.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{Error as TlsError, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::spiffe::{SpiffeError, SpiffeId, validate_trust_domain};

/// Why a peer (or our own trust material) failed mesh verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the trust bundle is empty")]
    NoTrustAnchors,
    #[error("trust bundle certificate #{index} is not usable as a trust anchor: {reason}")]
    BadTrustAnchor { index: usize, reason: String },
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate has no SPIFFE id (no URI SAN)")]
    NoSpiffeId,
    #[error("certificate has {0} URI SANs; a SPIFFE certificate must carry exactly one")]
    MultipleUriSans(usize),
    #[error("certificate URI SAN is not a mesh SPIFFE id: {0}")]
    InvalidSpiffeId(SpiffeError),
    // Boxed: two inline ids would make every Result carrying this error 150 bytes wide.
    #[error("peer identity is {presented}, expected {expected}")]
    UnexpectedIdentity {
        expected: Box<SpiffeId>,
        presented: Box<SpiffeId>,
    },
    #[error("peer identity {presented} is outside trust domain {expected:?}")]
    ForeignTrustDomain {
        expected: String,
        presented: SpiffeId,
    },
    #[error("invalid local trust domain: {0}")]
    TrustDomain(SpiffeError),
    #[error("building the TLS configuration failed: {0}")]
    Tls(#[from] TlsError),
}

/// The CA certificates we accept peers from, parsed once so that building a client config per
/// pooled connection does not re-parse the bundle. Cheap to clone.
#[derive(Clone)]
pub struct TrustAnchors {
    anchors: Arc<[TrustAnchor<'static>]>,
    certs: Arc<[CertificateDer<'static>]>,
}

impl TrustAnchors {
    /// Parses a trust bundle. An empty bundle is an error: it would refuse every peer, which
    /// is never what the operator meant.
    pub fn new(certs: &[CertificateDer<'static>]) -> Result<Self, VerifyError> {
        if certs.is_empty() {
            return Err(VerifyError::NoTrustAnchors);
        }
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| VerifyError::BadTrustAnchor {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anchors: anchors.into(),
            certs: certs.into(),
        })
    }

    /// The bundle as DER certificates, e.g. to publish it to workloads or dump it.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Anchors from PEM text; `source_name` names it in errors (a file, a ConfigMap key).
    pub fn from_pem(pem: &str, source_name: &str) -> Result<Self, VerifyError> {
        let certs = super::pem::certificates(pem, source_name)
            .map_err(|e| VerifyError::BadCertificate(e.to_string()))?;
        Self::new(&certs)
    }

    /// Verifies that `end_entity` chains to one of these anchors (through `intermediates`)
    /// for `usage` at `now`. Exposed so the CA can prove at load time that what it issues
    /// will verify.
    pub(crate) fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), webpki::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)?;
        ee.verify_for_usage(
            provider().signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )?;
        Ok(())
    }
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustAnchors({} certificates)", self.certs.len())
    }
}

/// The one crypto provider the mesh uses; built once because every config needs it.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    #[cfg(feature = "aws-lc-rs")]
    let make = rustls::crypto::aws_lc_rs::default_provider;
    #[cfg(not(feature = "aws-lc-rs"))]
    let make = rustls::crypto::ring::default_provider;
    PROVIDER.get_or_init(|| Arc::new(make())).clone()
}

/// The SPIFFE identity a certificate speaks for.
///
/// Follows the X.509-SVID rule of exactly one URI SAN: a certificate naming two identities
/// would let whoever reads the "first" one disagree with whoever reads the "last" one.
/// This does not verify the certificate; call it only on certificates whose chain verified.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| VerifyError::BadCertificate(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| VerifyError::BadCertificate(format!("subjectAltName: {e}")))?;
    let Some(san) = san else {
        return Err(VerifyError::NoSpiffeId);
    };
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(Ok(*uri)),
            // A URI entry that is not valid IA5 still counts: it is a second name we cannot read.
            GeneralName::Invalid(tag, _) if tag.0 == 6 => Some(Err(())),
            _ => None,
        });
    let (first, rest) = (uris.next(), uris.count());
    match (first, rest) {
        (None, _) => Err(VerifyError::NoSpiffeId),
        (Some(_), n) if n > 0 => Err(VerifyError::MultipleUriSans(n + 1)),
        (Some(Err(())), _) => Err(VerifyError::BadCertificate(
            "URI SAN is not valid IA5 text".to_owned(),
        )),
        (Some(Ok(uri)), _) => uri.parse().map_err(VerifyError::InvalidSpiffeId),
    }
}

/// The verified identity of the peer of an established connection.
pub fn connection_peer_identity(conn: &rustls::CommonState) -> Result<SpiffeId, VerifyError> {
    match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => peer_identity(leaf),
        None => Err(VerifyError::BadCertificate(
            "peer presented no certificate".to_owned(),
        )),
    }
}

/// Client-side verifier: the server must hold a certificate from our CA for exactly the
/// identity service discovery told us to expect.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: TrustAnchors,
    expected: SpiffeId,
}

impl SpiffeServerVerifier {
    /// A verifier that accepts only `expected`, issued under `roots`.
    pub fn new(roots: TrustAnchors, expected: SpiffeId) -> Self {
        Self { roots, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The server name is ignored: clients dial pod IPs, and the identity check below is
        // what binds the connection to the intended workload.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.roots
            .verify_chain(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
            )
            .map_err(pki_error)?;
        let presented = peer_identity(end_entity).map_err(identity_error)?;
        if presented != self.expected {
            return Err(identity_error(VerifyError::UnexpectedIdentity {
                expected: Box::new(self.expected.clone()),
                presented: Box::new(presented),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server-side verifier: a client must present a certificate from our CA for some identity in
/// our trust domain. Which identities may connect is authorization's job, not the handshake's.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    roots: TrustAnchors,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    /// A verifier that accepts any identity of `trust_domain` issued under `roots`.
    pub fn new(roots: TrustAnchors, trust_domain: &str) -> Result<Self, VerifyError> {
        validate_trust_domain(trust_domain).map_err(VerifyError::TrustDomain)?;
        Ok(Self {
            roots,
            trust_domain: trust_domain.to_owned(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    // No hints: every client holds exactly one certificate from the mesh CA, so there is
    // nothing to choose between, and listing CA names would only leak them.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.roots
            .verify_chain(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
            )
            .map_err(pki_error)?;
        let presented = peer_identity(end_entity).map_err(identity_error)?;
        if presented.trust_domain() != self.trust_domain {
            return Err(identity_error(VerifyError::ForeignTrustDomain {
                expected: self.trust_domain.clone(),
                presented,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, TlsError> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

// Configs only enable TLS 1.3, so reaching this means a misbuilt config; refuse loudly.
fn tls12_refused() -> TlsError {
    TlsError::General("TLS 1.2 is not allowed in the mesh".to_owned())
}

/// Identity failures are "valid certificate, wrong workload": carry our error as the cause so
/// logs say which identity was presented and which was expected.
fn identity_error(e: VerifyError) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Maps webpki's chain errors onto rustls' vocabulary, so callers can match on expiry and
/// unknown-issuer the same way they would for rustls' own verifiers.
fn pki_error(e: webpki::Error) -> TlsError {
    use webpki::Error as W;
    let cert_error = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::UnsupportedCriticalExtension => CertificateError::UnhandledCriticalExtension,
        #[allow(deprecated)]
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    TlsError::InvalidCertificate(cert_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::{TestCa, id};

    #[test]
    fn peer_identity_reads_single_spiffe_uri() {
        let ca = TestCa::root();
        let issued = ca.issue(&id("a"));
        assert_eq!(peer_identity(&issued.chain[0]).unwrap(), id("a"));
    }

    #[test]
    fn peer_identity_refuses_missing_spiffe_id() {
        let ca = TestCa::root();
        let dns_only = ca.leaf_with_sans(vec![rcgen::SanType::DnsName(
            "a.example".try_into().unwrap(),
        )]);
        assert!(matches!(
            peer_identity(&dns_only.0),
            Err(VerifyError::NoSpiffeId)
        ));
        let none = ca.leaf_with_sans(vec![]);
        assert!(matches!(
            peer_identity(&none.0),
            Err(VerifyError::NoSpiffeId)
        ));
    }

    #[test]
    fn peer_identity_refuses_two_uri_sans() {
        let ca = TestCa::root();
        let two = ca.leaf_with_sans(vec![
            rcgen::SanType::URI(id("a").to_string().try_into().unwrap()),
            rcgen::SanType::URI("https://example.com".try_into().unwrap()),
        ]);
        assert!(matches!(
            peer_identity(&two.0),
            Err(VerifyError::MultipleUriSans(2))
        ));
    }

    #[test]
    fn peer_identity_refuses_non_mesh_uri() {
        let ca = TestCa::root();
        let other = ca.leaf_with_sans(vec![rcgen::SanType::URI(
            "spiffe://td/workload/x".try_into().unwrap(),
        )]);
        assert!(matches!(
            peer_identity(&other.0),
            Err(VerifyError::InvalidSpiffeId(SpiffeError::Path(_)))
        ));
    }

    #[test]
    fn trust_anchors_refuse_empty_bundle() {
        assert!(matches!(
            TrustAnchors::new(&[]),
            Err(VerifyError::NoTrustAnchors)
        ));
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(matches!(
            TrustAnchors::new(&[junk]),
            Err(VerifyError::BadTrustAnchor { index: 0, .. })
        ));
    }
}
