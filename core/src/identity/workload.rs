//! One workload's certificate, with the TLS material built from it prepared once.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};

use super::ca::{IssuedCertificate, rfc3339};
use super::spiffe::SpiffeId;
use super::tls::{certified_key, client_config_with_key, server_config_with_key};
use super::verify::{TrustAnchors, VerifyError};

/// A workload certificate ready for handshakes.
///
/// Immutable: rotation replaces the whole value, so a connection that captured a config keeps
/// the certificate it started with while new handshakes pick up the new one.
pub struct WorkloadCertificate {
    /// The certificate and key as issued.
    pub issued: IssuedCertificate,
    key: Arc<CertifiedKey>,
    roots: TrustAnchors,
    server_config: Arc<ServerConfig>,
}

impl WorkloadCertificate {
    /// Loads the key and builds the server config (one per certificate, shared by every
    /// inbound connection). Fails if the key does not match the leaf.
    pub fn new(
        issued: IssuedCertificate,
        roots: TrustAnchors,
        trust_domain: &str,
    ) -> Result<Self, VerifyError> {
        let key = certified_key(&issued)?;
        let server_config = server_config_with_key(key.clone(), &roots, trust_domain)?;
        Ok(Self {
            issued,
            key,
            roots,
            server_config,
        })
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.issued.identity
    }

    /// The server side of mTLS for this workload; cheap (an `Arc` clone).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.clone()
    }

    /// A client config that presents this certificate and accepts only a server proving
    /// `expected`. Built per call because the expected peer differs per connection; the key
    /// is not re-parsed.
    pub fn client_config(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>, VerifyError> {
        client_config_with_key(self.key.clone(), &self.roots, expected.clone())
    }

    /// Whether the certificate can be used for a new handshake at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.issued.is_valid_at(now)
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.issued.identity)
            .field("not_before", &rfc3339(self.issued.not_before))
            .field("not_after", &rfc3339(self.issued.not_after))
            .finish_non_exhaustive()
    }
}
