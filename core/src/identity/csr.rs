//! Certificate signing requests: how a node asks a remote CA for a workload certificate while
//! the private key stays on the node, and how the CA checks such a request before it signs.
//!
//! The CA signs only the request's public key. Every other field of the certificate comes from
//! the CA's own leaf profile; the request's SANs are checked, not copied, so a request can
//! never widen what it is issued.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ca::{CLOCK_SKEW_ALLOWANCE, CaError, CertificateAuthority};
use super::spiffe::SpiffeId;

/// Why a signing request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate signing request cannot be parsed: {0}")]
    Malformed(String),
    #[error("the certificate signing request's signature does not match its public key")]
    BadSignature,
    #[error(
        "the certificate signing request names {found}, not the requested identity {requested}"
    )]
    WrongIdentity { requested: SpiffeId, found: String },
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl CsrError {
    /// A short, stable label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::BadSignature => "malformed_csr",
            Self::WrongIdentity { .. } => "identity_mismatch",
            Self::Ca(_) => "ca_error",
        }
    }
}

/// A fresh key and a PEM request for `id`; the key is what the node keeps.
pub fn new_request(id: &SpiffeId) -> Result<(PrivateKeyDer<'static>, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| CaError::Generate(e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let pem = params.serialize_request(&key)?.pem()?;
    Ok((
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        pem,
    ))
}

/// What the CA signed for a request: the wire chain (leaf first) and its validity.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertificateAuthority {
    /// Checks that `csr_pem` is a well-formed, self-signed request whose only SAN is `id`, and
    /// signs its public key into a workload certificate for `id` valid for `lifetime` (capped
    /// at the CA's expiry).
    pub fn sign_request(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<SignedRequest, CsrError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            other => CsrError::Malformed(other.to_string()),
        })?;
        let wanted = id.to_string();
        match request.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] if uri.as_str() == wanted => {}
            [] => {
                return Err(CsrError::WrongIdentity {
                    requested: id.clone(),
                    found: "no subject alternative name".to_owned(),
                });
            }
            sans => {
                return Err(CsrError::WrongIdentity {
                    requested: id.clone(),
                    found: sans.iter().map(describe).collect::<Vec<_>>().join(", "),
                });
            }
        }
        let now = SystemTime::now();
        let not_after = self.leaf_not_after(now, lifetime)?;
        let (chain, not_before, not_after) = self.sign_leaf(
            id,
            &[],
            &request.public_key,
            now - CLOCK_SKEW_ALLOWANCE,
            not_after,
        )?;
        Ok(SignedRequest {
            chain,
            not_before,
            not_after,
        })
    }
}

fn describe(san: &SanType) -> String {
    match san {
        SanType::URI(u) => format!("URI {}", u.as_str()),
        SanType::DnsName(d) => format!("DNS {}", d.as_str()),
        SanType::Rfc822Name(m) => format!("email {}", m.as_str()),
        SanType::IpAddress(ip) => format!("IP {ip}"),
        _ => "an unsupported name".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::super::ca::IssuedCertificate;
    use super::super::test_support::{TestCa, id};
    use super::super::tls::certified_key;
    use super::super::verify::peer_identity;
    use super::*;

    fn request_with_sans(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn an_intermediate_ca_signs_the_requests_key_for_the_requested_identity() {
        let ca = TestCa::intermediate();
        let (key, csr) = new_request(&id("reviews")).unwrap();
        let signed = ca
            .ca
            .sign_request(&csr, &id("reviews"), Duration::from_secs(600))
            .unwrap();
        assert_eq!(peer_identity(&signed.chain[0]).unwrap(), id("reviews"));
        assert_eq!(signed.chain[1..], ca.intermediates[..]);
        let issued = IssuedCertificate {
            identity: id("reviews"),
            chain: signed.chain,
            key,
            not_before: signed.not_before,
            not_after: signed.not_after,
        };
        certified_key(&issued).expect("the leaf carries the node's key");
        ca.roots()
            .verify_chain(
                &issued.chain[0],
                &issued.chain[1..],
                rustls::pki_types::UnixTime::now(),
                webpki::KeyUsage::client_auth(),
            )
            .unwrap();
    }

    #[test]
    fn a_request_is_signed_only_for_exactly_the_identity_it_names() {
        let ca = TestCa::root();
        let uri = |s: &str| SanType::URI(s.to_owned().try_into().unwrap());
        let wanted = id("reviews");
        let cases = [
            vec![],
            vec![uri("spiffe://cluster.local/ns/default/sa/ratings")],
            vec![
                uri(&wanted.to_string()),
                uri("spiffe://cluster.local/ns/default/sa/admin"),
            ],
            vec![
                uri(&wanted.to_string()),
                SanType::DnsName("reviews.default.svc".to_owned().try_into().unwrap()),
            ],
        ];
        for sans in cases {
            let csr = request_with_sans(sans.clone());
            let err = ca
                .ca
                .sign_request(&csr, &wanted, Duration::from_secs(600))
                .unwrap_err();
            assert!(
                matches!(err, CsrError::WrongIdentity { .. }),
                "{sans:?}: {err}"
            );
            assert_eq!(err.reason(), "identity_mismatch");
        }
    }

    #[test]
    fn garbage_and_tampered_requests_are_refused() {
        let ca = TestCa::root();
        let wanted = id("reviews");
        for garbage in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\n!!\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            let err = ca
                .ca
                .sign_request(garbage, &wanted, Duration::from_secs(60))
                .unwrap_err();
            assert!(matches!(err, CsrError::Malformed(_)), "{garbage:?}: {err}");
        }
        // Flip one bit inside the signed part: the signature no longer matches.
        let (_, csr) = new_request(&wanted).unwrap();
        let block = ::pem::parse(&csr).unwrap();
        let mut der = block.contents().to_vec();
        let at = der.len() / 3;
        der[at] ^= 0x01;
        let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        let err = ca
            .ca
            .sign_request(&tampered, &wanted, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            matches!(err, CsrError::BadSignature | CsrError::Malformed(_)),
            "{err}"
        );
    }
}
