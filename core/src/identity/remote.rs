//! Certificates from a remote CA over Istio's certificate protocol: weft-controller in
//! Kubernetes mode (or istiod, which speaks the same protocol).
//!
//! The key is made here and only the CSR travels. The caller authenticates with its
//! service-account token (`authorization: Bearer`), re-read from its file on every request
//! because the kubelet rotates projected tokens. The channel is TLS verified against the
//! mesh's own trust anchors and the controller's SPIFFE id, not the system roots. A response
//! is checked before it is used: it must chain to those anchors and name the identity asked
//! for, so a confused or compromised CA cannot hand a node a certificate for someone else.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use prost_types::value::Kind;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::ca::IssuedCertificate;
use super::csr::new_request;
use super::manager::{CertificateProvider, IssueFuture, ProviderError};
use super::pem;
use super::protocol::istio_certificate_service_client::IstioCertificateServiceClient;
use super::protocol::{IMPERSONATED_IDENTITY, IstioCertificateRequest, IstioCertificateResponse};
use super::spiffe::SpiffeId;
use super::tls::{certified_key, control_client_config};
use super::verify::{TrustAnchors, VerifyError, peer_identity};

/// How long one certificate request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the remote CA is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RemoteCaConfig {
    /// `https://host:port` of the certificate service.
    pub address: String,
    /// The identity the certificate service must prove in its TLS handshake.
    pub server_identity: SpiffeId,
    /// The mesh's trust anchors: the service's certificate and every issued chain must verify
    /// against them.
    pub anchors: TrustAnchors,
    /// The projected service-account token to authenticate with; none sends no credentials.
    pub token_path: Option<PathBuf>,
    /// Requested certificate lifetime (the CA may shorten it).
    pub lifetime: Duration,
    /// Ask on a workload's behalf (a node agent) rather than for the caller's own identity.
    pub impersonate: bool,
}

/// Why a remote CA could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteCaError {
    #[error("certificate service address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("certificate service TLS: {0}")]
    Tls(#[from] VerifyError),
}

/// A [`CertificateProvider`] that asks a remote CA.
pub struct RemoteCa {
    client: IstioCertificateServiceClient<Channel>,
    config: RemoteCaConfig,
}

impl std::fmt::Debug for RemoteCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCa")
            .field("address", &self.config.address)
            .field("server_identity", &self.config.server_identity)
            .finish_non_exhaustive()
    }
}

impl RemoteCa {
    /// A provider for `config`. Connects lazily, so the CA being down at start is an issuance
    /// error (retried by the certificate manager), not a startup failure.
    pub fn new(config: RemoteCaConfig) -> Result<Self, RemoteCaError> {
        let channel = control_channel(
            &config.address,
            &config.anchors,
            config.server_identity.clone(),
        )?;
        Ok(Self {
            client: IstioCertificateServiceClient::new(channel),
            config,
        })
    }

    async fn fetch(&self, id: &SpiffeId) -> Result<IssuedCertificate, ProviderError> {
        let (key, csr) = new_request(id)?;
        let metadata = self.config.impersonate.then(|| prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.config.lifetime.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        if let Some(path) = &self.config.token_path {
            let token = tokio::fs::read_to_string(path).await.map_err(|e| {
                ProviderError::Unavailable(format!(
                    "reading the service-account token {}: {e}",
                    path.display()
                ))
            })?;
            let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
                ProviderError::Unavailable(format!(
                    "the service-account token in {} is not valid header text",
                    path.display()
                ))
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| {
                ProviderError::Unavailable(format!(
                    "certificate service at {} answered {:?}: {}",
                    self.config.address,
                    status.code(),
                    status.message()
                ))
            })?
            .into_inner();
        let issued = accept(response, id, key, &self.config.anchors)?;
        Ok(issued)
    }
}

impl CertificateProvider for RemoteCa {
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        Box::pin(self.fetch(id))
    }
}

/// A lazily connecting gRPC channel to the control plane at `address` (`https://host:port`),
/// over TLS that accepts only a server proving `server_identity` under `anchors`.
pub fn control_channel(
    address: &str,
    anchors: &TrustAnchors,
    server_identity: SpiffeId,
) -> Result<Channel, RemoteCaError> {
    let bad = |reason: String| RemoteCaError::Address {
        address: address.to_owned(),
        reason,
    };
    let uri: Uri = address.parse().map_err(|e| bad(format!("{e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must be an https:// URL".to_owned()));
    }
    let host = uri
        .host()
        .ok_or_else(|| bad("has no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| bad(format!("host is not a DNS name or IP: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(control_client_config(anchors, server_identity)?);
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, host, server_name) = (tls.clone(), host.clone(), server_name.clone());
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(Endpoint::from(uri)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(connector))
}

/// Checks a response and pairs it with the key the request was made with.
fn accept(
    response: IstioCertificateResponse,
    id: &SpiffeId,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    anchors: &TrustAnchors,
) -> Result<IssuedCertificate, ProviderError> {
    let bad = |reason: String| {
        ProviderError::Unavailable(format!(
            "the certificate service's answer for {id}: {reason}"
        ))
    };
    let mut certs: Vec<CertificateDer<'static>> = Vec::new();
    // Istio may put several PEM blocks (the roots) in one entry.
    for (i, entry) in response.cert_chain.iter().enumerate() {
        let parsed = pem::certificates(entry, &format!("cert_chain[{i}]"))
            .map_err(|e| bad(e.to_string()))?;
        certs.extend(parsed);
    }
    if certs.is_empty() {
        return Err(bad("empty certificate chain".to_owned()));
    }
    let leaf = certs.remove(0);
    // Only the certificates between the leaf and an anchor go on the wire.
    let intermediates: Vec<CertificateDer<'static>> = certs
        .into_iter()
        .filter(|c| !anchors.certificates().contains(c))
        .collect();
    anchors
        .verify_chain(
            &leaf,
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .map_err(|e| bad(format!("does not chain to the mesh's trust anchors: {e}")))?;
    let named = peer_identity(&leaf).map_err(|e| bad(e.to_string()))?;
    if &named != id {
        return Err(bad(format!("the certificate names {named}")));
    }
    let (not_before, not_after) = validity(&leaf).map_err(bad)?;
    let mut chain = vec![leaf];
    chain.extend(intermediates);
    let issued = IssuedCertificate {
        identity: id.clone(),
        chain,
        key,
        not_before,
        not_after,
    };
    // The leaf must carry the key this node made, or every handshake would fail later.
    certified_key(&issued).map_err(|e| bad(format!("unusable with our key: {e}")))?;
    Ok(issued)
}

fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or_default());
    Ok((
        at(x509.validity().not_before.timestamp()),
        at(x509.validity().not_after.timestamp()),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::pem::certificates_pem;
    use super::super::test_support::{TestCa, id};
    use super::*;

    fn answer(chain: &[CertificateDer<'_>]) -> IstioCertificateResponse {
        IstioCertificateResponse {
            cert_chain: chain
                .iter()
                .map(|c| certificates_pem(std::slice::from_ref(c)))
                .collect(),
            root_cert: None,
        }
    }

    #[test]
    fn an_answer_is_used_only_if_it_chains_to_our_anchors_names_our_identity_and_has_our_key() {
        let ca = TestCa::intermediate();
        let anchors = ca.roots();
        let wanted = id("reviews");
        let (key, csr) = new_request(&wanted).unwrap();
        let signed = ca
            .ca
            .sign_request(&csr, &wanted, Duration::from_secs(600))
            .unwrap();
        let mut full = signed.chain.clone();
        full.extend(ca.ca.trust_bundle().iter().cloned());

        // Leaf, intermediate, root: accepted, and the root is not sent on the wire.
        let issued = accept(answer(&full), &wanted, key.clone_key(), &anchors).unwrap();
        assert_eq!(issued.chain, signed.chain);

        let refused = |response, id: &SpiffeId, key: rustls::pki_types::PrivateKeyDer<'static>| {
            accept(response, id, key, &anchors).unwrap_err().to_string()
        };
        let err = refused(answer(&[]), &wanted, key.clone_key());
        assert!(err.contains("empty"), "{err}");
        // A certificate for someone else.
        let err = refused(answer(&full), &id("ratings"), key.clone_key());
        assert!(
            err.contains("names spiffe://cluster.local/ns/default/sa/reviews"),
            "{err}"
        );
        // From a CA this node does not trust.
        let stranger = TestCa::root_named("stranger");
        let (other_key, other_csr) = new_request(&wanted).unwrap();
        let foreign = stranger
            .ca
            .sign_request(&other_csr, &wanted, Duration::from_secs(600))
            .unwrap();
        let err = refused(answer(&foreign.chain), &wanted, other_key);
        assert!(err.contains("trust anchors"), "{err}");
        // Signed for a key this node did not make.
        let (stolen_key, _) = new_request(&wanted).unwrap();
        let err = refused(answer(&full), &wanted, stolen_key);
        assert!(err.contains("our key"), "{err}");
        // Not PEM at all.
        let garbage = IstioCertificateResponse {
            cert_chain: vec!["garbage".to_owned()],
            root_cert: None,
        };
        assert!(accept(garbage, &wanted, key, &anchors).is_err());
    }
}
