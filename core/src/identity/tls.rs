//! rustls configurations for HBONE mTLS.
//!
//! Every mesh connection uses the same profile, taken from Istio's HBONE: TLS 1.3 only, ALPN
//! `h2`, both sides authenticate with their workload certificate, and no session resumption.
//! Resumption is off because a resumed session skips certificate verification, so a peer
//! could keep using an identity after its certificate was rotated away or expired.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};

use super::ca::IssuedCertificate;
use super::spiffe::SpiffeId;
use super::verify::{
    SpiffeClientVerifier, SpiffeServerVerifier, TrustAnchors, VerifyError, provider,
};

/// The ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// A client configuration that presents `cert` and accepts only a server proving `expected`.
pub fn client_config(
    cert: &IssuedCertificate,
    roots: &TrustAnchors,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, VerifyError> {
    client_config_with_key(certified_key(cert)?, roots, expected)
}

/// A server configuration that presents `cert` and requires a client certificate for an
/// identity in `trust_domain`.
pub fn server_config(
    cert: &IssuedCertificate,
    roots: &TrustAnchors,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, VerifyError> {
    server_config_with_key(certified_key(cert)?, roots, trust_domain)
}

/// Loads the private key once, so configs built per connection do not re-parse it.
pub(crate) fn certified_key(cert: &IssuedCertificate) -> Result<Arc<CertifiedKey>, VerifyError> {
    let key = CertifiedKey::from_der(cert.chain.clone(), cert.key.clone_key(), &provider())?;
    Ok(Arc::new(key))
}

pub(crate) fn client_config_with_key(
    key: Arc<CertifiedKey>,
    roots: &TrustAnchors,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, VerifyError> {
    let mut config = verifying_server(roots, expected)?
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    // Peers are addressed by IP and identified by certificate; SNI would carry nothing useful.
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// TLS 1.3, accepting only a server that proves `expected` under `roots`: the start of every
/// client configuration, with or without a client certificate.
fn verifying_server(
    roots: &TrustAnchors,
    expected: SpiffeId,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, VerifyError> {
    let verifier = SpiffeServerVerifier::new(roots.clone(), expected);
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

pub(crate) fn server_config_with_key(
    key: Arc<CertifiedKey>,
    roots: &TrustAnchors,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, VerifyError> {
    let verifier = SpiffeClientVerifier::new(roots.clone(), trust_domain)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration for the control plane (the certificate service): no client
/// certificate, since the caller authenticates with its service-account token, and a server
/// that must prove `expected` under `roots`.
pub fn control_client_config(
    roots: &TrustAnchors,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, VerifyError> {
    let mut config = verifying_server(roots, expected)?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The control plane's server configuration: presents `cert`, asks for no client
/// certificate (callers authenticate with a token inside the channel).
pub fn control_server_config(cert: &IssuedCertificate) -> Result<Arc<ServerConfig>, VerifyError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key(cert)?)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
