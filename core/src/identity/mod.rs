//! Workload identity: who a workload is (SPIFFE ids), how it proves it (certificates from the
//! mesh CA, rotated before they expire), and how peers check that proof (mTLS verifiers that
//! compare SPIFFE ids instead of host names).
//!
//! The node agent holds certificates only for workloads running on its node; everything here
//! is built so that a certificate never outlives the reason to hold it.

mod ca;
mod pem;
mod spiffe;
mod tls;
mod verify;

#[cfg(test)]
mod test_support;

pub use ca::{
    CLOCK_SKEW_ALLOWANCE, CaError, CertificateAuthority, IssuedCertificate, RootFiles,
    generate_intermediate, generate_root, init_root_dir,
};
pub use pem::PemError;
pub use spiffe::{SpiffeError, SpiffeId, validate_trust_domain};
pub use tls::{ALPN_H2, client_config, server_config};
pub use verify::{
    SpiffeClientVerifier, SpiffeServerVerifier, TrustAnchors, VerifyError,
    connection_peer_identity, peer_identity,
};
