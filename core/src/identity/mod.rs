//! Workload identity: who a workload is (SPIFFE ids), how it proves it (certificates from the
//! mesh CA, rotated before they expire), and how peers check that proof (mTLS verifiers that
//! compare SPIFFE ids instead of host names).
//!
//! - [`spiffe`](SpiffeId): the identity type and its strict parser.
//! - [`CertificateAuthority`]: standalone-mode CA loaded from PEM files.
//! - [`SpiffeServerVerifier`] / [`SpiffeClientVerifier`] and [`client_config`] /
//!   [`server_config`]: the HBONE mTLS profile.
//! - [`CertificateManager`]: per-node certificate cache with renewal at half-life.
//! - [`RemoteCa`] and [`protocol`]: certificates from weft-controller over Istio's
//!   certificate protocol; [`CertificateAuthority::sign_request`] is the CA's side of it.
//!
//! The node agent holds certificates only for workloads running on its node, and drops them
//! when those workloads leave.

mod bootstrap;
mod ca;
mod csr;
mod issuer;
mod manager;
mod pem;
pub mod protocol;
mod remote;
mod spiffe;
mod tls;
mod verify;
mod workload;

#[cfg(test)]
mod test_support;

pub use bootstrap::{RootFiles, generate_intermediate, generate_root, init_root_dir};
pub use ca::{CLOCK_SKEW_ALLOWANCE, CaError, CertificateAuthority, IssuedCertificate};
pub use csr::{CsrError, SignedRequest, new_request};
pub use issuer::{ControllerOptions, Issuer, IssuerError, issuer};
pub use manager::{
    CertificateManager, CertificateProvider, CertificateStatus, FIRST_ISSUANCE_TIMEOUT,
    INITIAL_RETRY_DELAY, IdentityError, IssueFuture, LocalCa, MAX_RETRY_DELAY, ProviderError,
};
pub use pem::{PemError, certificates_pem};
pub use remote::{RemoteCa, RemoteCaConfig, RemoteCaError, control_channel};
pub use spiffe::{SpiffeError, SpiffeId, validate_trust_domain};
pub use tls::{
    ALPN_H2, client_config, control_client_config, control_server_config, server_config,
};
pub use verify::{
    SpiffeClientVerifier, SpiffeServerVerifier, TrustAnchors, VerifyError,
    connection_peer_identity, peer_identity,
};
pub use workload::WorkloadCertificate;
