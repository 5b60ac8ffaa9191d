//! The standalone-mode certificate authority: signs workload certificates with a CA key that
//! the operator provides as PEM files (Istio's `cacerts` layout works as is).
//!
//! Everything that could make issued certificates unverifiable is checked when the CA is
//! loaded, including a trial issuance verified against the trust bundle, so a broken CA setup
//! fails `weftd` at startup with a message naming the file, instead of failing every handshake
//! later with "unknown issuer".

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use time::OffsetDateTime;

use super::pem::{self, PemError};
use super::spiffe::SpiffeId;
use super::verify::TrustAnchors;

/// How far `issue` backdates `not_before`, so a peer whose clock runs a little behind ours
/// does not see a brand-new certificate as "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Why CA material could not be loaded or a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite CA material")]
    AlreadyExists(PathBuf),
    #[error("{source_name}: {reason}")]
    BadCertificate { source_name: String, reason: String },
    #[error("{0}: certificate is not a CA (basicConstraints cA is not set)")]
    NotCa(String),
    #[error("{0}: CA certificate's key usage does not allow signing certificates (keyCertSign)")]
    CannotSign(String),
    #[error("{0}: CA certificate expired at {1}")]
    CaExpired(String, String),
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error(
        "{0}: the issuing certificate is not self-signed, so a trust bundle holding its root is required"
    )]
    BundleRequired(String),
    #[error("certificates issued by this CA would not verify against the trust bundle: {0}")]
    SelfTest(String),
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
}

/// A certificate and key for one workload identity, as handed to TLS.
pub struct IssuedCertificate {
    /// The identity the certificate's single URI SAN names.
    pub identity: SpiffeId,
    /// Leaf first, then intermediates up to (not including) the root, as sent on the wire.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// Start of validity as written in the leaf (whole seconds).
    pub not_before: SystemTime,
    /// End of validity as written in the leaf (whole seconds).
    pub not_after: SystemTime,
}

// Manual Clone because PrivateKeyDer deliberately is not Clone (copies of secrets should be
// visible in code); a certificate is routinely shared between configs, so we opt in here.
impl Clone for IssuedCertificate {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("identity", &self.identity)
            .field("chain_len", &self.chain.len())
            .field("not_before", &rfc3339(self.not_before))
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl IssuedCertificate {
    /// Whether the certificate's validity window contains `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// A loaded, self-checked CA that signs workload certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    issuing_not_after: SystemTime,
    /// Certificates sent after the leaf: the issuing cert (if not a root) and the
    /// intermediates above it.
    intermediates: Vec<CertificateDer<'static>>,
    bundle: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("intermediates", &self.intermediates.len())
            .field("bundle", &self.bundle.len())
            .field("not_after", &rfc3339(self.issuing_not_after))
            .finish_non_exhaustive()
    }
}

/// PEM inputs with the names errors should use for them (file paths, or roles).
struct Sources<'a> {
    cert: (&'a str, String),
    key: (&'a str, String),
    chain: Option<(&'a str, String)>,
    bundle: Option<(&'a str, String)>,
}

impl CertificateAuthority {
    /// Builds a CA from PEM text. `chain_pem` holds the intermediates above the issuing
    /// certificate (it may also repeat the issuing certificate and end with the root, as
    /// Istio's `cert-chain.pem` does). `bundle_pem` holds the trust anchors; it defaults to the
    /// issuing certificate when that is a self-signed root.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        chain_pem: Option<&str>,
        bundle_pem: Option<&str>,
    ) -> Result<Self, CaError> {
        Self::build(Sources {
            cert: (cert_pem, "CA certificate".to_owned()),
            key: (key_pem, "CA key".to_owned()),
            chain: chain_pem.map(|p| (p, "CA chain".to_owned())),
            bundle: bundle_pem.map(|p| (p, "trust bundle".to_owned())),
        })
    }

    /// Like [`from_pem`](Self::from_pem), reading files; errors name the offending file.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        chain_path: Option<&Path>,
        bundle_path: Option<&Path>,
    ) -> Result<Self, CaError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert = read(cert_path)?;
        let key = read(key_path)?;
        let chain = chain_path.map(|p| read(p).map(|s| (s, p))).transpose()?;
        let bundle = bundle_path.map(|p| read(p).map(|s| (s, p))).transpose()?;
        let name = |p: &Path| p.display().to_string();
        Self::build(Sources {
            cert: (&cert, name(cert_path)),
            key: (&key, name(key_path)),
            chain: chain.as_ref().map(|(s, p)| (s.as_str(), name(p))),
            bundle: bundle.as_ref().map(|(s, p)| (s.as_str(), name(p))),
        })
    }

    fn build(src: Sources<'_>) -> Result<Self, CaError> {
        let (cert_pem, cert_name) = &src.cert;
        let (key_pem, key_name) = &src.key;
        let issuing = pem::certificates(cert_pem, cert_name)?.remove(0);
        let key = pem::key_pair(key_pem, key_name)?;
        let info = check_ca_cert(&issuing, cert_name, &key, key_name)?;

        let bundle = match &src.bundle {
            Some((pem, name)) => pem::certificates(pem, name)?,
            None if info.self_signed => vec![issuing.clone()],
            None => return Err(CaError::BundleRequired(cert_name.clone())),
        };
        let anchors = TrustAnchors::new(&bundle).map_err(|e| CaError::BadCertificate {
            source_name: src
                .bundle
                .as_ref()
                .map_or_else(|| cert_name.clone(), |(_, n)| n.clone()),
            reason: e.to_string(),
        })?;

        // Peers already hold the anchors and cannot use a self-signed cert as a link, so the
        // wire chain carries only the certificates between the leaf and the anchor.
        let chain_certs = match &src.chain {
            Some((pem, name)) => pem::certificates(pem, name)?,
            None => Vec::new(),
        };
        let mut intermediates: Vec<CertificateDer<'static>> = Vec::new();
        for cert in std::iter::once(issuing.clone()).chain(chain_certs) {
            let keep =
                !is_self_signed(&cert) && !bundle.contains(&cert) && !intermediates.contains(&cert);
            if keep {
                intermediates.push(cert);
            }
        }

        let issuer =
            Issuer::from_ca_cert_der(&issuing, key).map_err(|e| CaError::BadCertificate {
                source_name: cert_name.clone(),
                reason: format!("cannot sign with this certificate: {e}"),
            })?;
        let ca = Self {
            issuer,
            issuing_not_after: info.not_after,
            intermediates,
            bundle,
        };
        ca.self_test(&issuing, &anchors)?;
        Ok(ca)
    }

    /// Issues a throwaway leaf and verifies it the way a peer would. This catches a bundle
    /// that lacks our root, a chain file with gaps, or a CA subject that does not re-encode
    /// byte-identically (issuer/subject matching is byte-wise).
    fn self_test(
        &self,
        issuing: &CertificateDer<'static>,
        anchors: &TrustAnchors,
    ) -> Result<(), CaError> {
        let now = SystemTime::now();
        let mut params = leaf_params(
            now - CLOCK_SKEW_ALLOWANCE,
            now + CLOCK_SKEW_ALLOWANCE,
            random_serial()?,
        )?;
        params
            .distinguished_name
            .push(DnType::CommonName, "weft CA self-test");
        let key = KeyPair::generate()?;
        let probe = params.signed_by(&key, &self.issuer)?;

        let issuing_subject = parse(issuing, "CA certificate")?
            .subject()
            .as_raw()
            .to_vec();
        if parse(probe.der(), "self-test certificate")?
            .issuer()
            .as_raw()
            != issuing_subject
        {
            return Err(CaError::SelfTest(
                "the CA subject name uses an encoding that cannot be reproduced".to_owned(),
            ));
        }
        anchors
            .verify_chain(
                probe.der(),
                &self.intermediates,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
            )
            .map_err(|e| CaError::SelfTest(e.to_string()))
    }

    /// Issues a workload certificate valid from (now - clock skew allowance) for `lifetime`,
    /// capped at the CA's own expiry since a leaf cannot outlive the chain that vouches for it.
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration) -> Result<IssuedCertificate, CaError> {
        let now = SystemTime::now();
        let not_after = self.leaf_not_after(now, lifetime)?;
        self.issue_with_validity(id, now - CLOCK_SKEW_ALLOWANCE, not_after)
    }

    /// Issues a workload certificate with an exact validity window. Meant for tests (expired
    /// or not-yet-valid certificates); `issue` is the production entry point.
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCertificate, CaError> {
        self.issue_with_key(id, &[], not_before, not_after)
    }

    /// Issues a certificate for a server that is reached by DNS name as well as by SPIFFE id
    /// (weft-controller: weftd checks its SPIFFE id, an Istio ztunnel its Service name).
    pub fn issue_serving(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let now = SystemTime::now();
        let not_after = self.leaf_not_after(now, lifetime)?;
        self.issue_with_key(id, dns_names, now - CLOCK_SKEW_ALLOWANCE, not_after)
    }

    /// A new key and a leaf for it.
    fn issue_with_key(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCertificate, CaError> {
        let key = KeyPair::generate()?;
        let (chain, not_before, not_after) =
            self.sign_leaf(id, dns_names, &key, not_before, not_after)?;
        Ok(IssuedCertificate {
            identity: id.clone(),
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }

    /// End of validity for a leaf issued now: `lifetime` on, capped at the CA's own expiry.
    pub(super) fn leaf_not_after(
        &self,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<SystemTime, CaError> {
        if now >= self.issuing_not_after {
            return Err(CaError::CaExpired(
                "CA certificate".to_owned(),
                rfc3339(self.issuing_not_after),
            ));
        }
        Ok(now
            .checked_add(lifetime)
            .ok_or_else(|| CaError::InvalidValidity(format!("lifetime {lifetime:?} too large")))?
            .min(self.issuing_not_after))
    }

    /// Signs a leaf for `public_key` naming `id` (and `dns_names`); returns the wire chain
    /// (leaf, then intermediates) and the validity as written.
    pub(super) fn sign_leaf(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, SystemTime, SystemTime), CaError> {
        let mut params = leaf_params(not_before, not_after, random_serial()?)?;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Generate(e))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns_names {
            let name = name
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Generate(e))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        let leaf = params.signed_by(public_key, &self.issuer)?;

        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(leaf.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        Ok((
            chain,
            system_time(params.not_before),
            system_time(params.not_after),
        ))
    }

    /// The trust anchors peers are verified against (and workloads should trust).
    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// When the issuing certificate expires; leaves are never valid past this.
    pub fn not_after(&self) -> SystemTime {
        self.issuing_not_after
    }
}

pub(super) struct CaInfo {
    pub(super) self_signed: bool,
    pub(super) not_after: SystemTime,
}

/// Checks that `cert` can act as a CA with `key`, before rcgen (which trusts its input) sees it.
pub(super) fn check_ca_cert(
    cert: &CertificateDer<'_>,
    cert_name: &str,
    key: &KeyPair,
    key_name: &str,
) -> Result<CaInfo, CaError> {
    let x509 = parse(cert, cert_name)?;
    let bad = |reason: String| CaError::BadCertificate {
        source_name: cert_name.to_owned(),
        reason,
    };
    let bc = x509
        .basic_constraints()
        .map_err(|e| bad(format!("basicConstraints: {e}")))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(CaError::NotCa(cert_name.to_owned()));
    }
    let ku = x509
        .key_usage()
        .map_err(|e| bad(format!("keyUsage: {e}")))?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(CaError::CannotSign(cert_name.to_owned()));
    }
    if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(CaError::KeyMismatch {
            cert: cert_name.to_owned(),
            key: key_name.to_owned(),
        });
    }
    // rcgen copies the subject into issued certificates and panics on an empty RDN and
    // rejects multi-valued ones; refuse both here with a message instead.
    if x509.subject().iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(bad(
            "subject has an empty or multi-valued RDN, which is not supported".to_owned(),
        ));
    }
    let not_after = UNIX_EPOCH
        + Duration::from_secs(
            u64::try_from(x509.validity().not_after.timestamp()).unwrap_or_default(),
        );
    if not_after <= SystemTime::now() {
        return Err(CaError::CaExpired(cert_name.to_owned(), rfc3339(not_after)));
    }
    Ok(CaInfo {
        self_signed: x509.subject().as_raw() == x509.issuer().as_raw(),
        not_after,
    })
}

fn parse<'a>(
    cert: &'a CertificateDer<'_>,
    name: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, CaError> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| CaError::BadCertificate {
            source_name: name.to_owned(),
            reason: format!("cannot parse certificate: {e}"),
        })
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
}

/// Parameters shared by every leaf: the Istio workload certificate profile.
fn leaf_params(
    not_before: SystemTime,
    not_after: SystemTime,
    serial: SerialNumber,
) -> Result<CertificateParams, CaError> {
    let (not_before, not_after) = validity(not_before, not_after)?;
    let mut params = CertificateParams::default();
    // Identity lives only in the URI SAN; an empty subject keeps peers from keying off a CN.
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// Converts to whole-second X.509 times. `not_after` rounds up so a requested lifetime is
/// never shortened by truncation.
pub(super) fn validity(
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let nb = unix_secs(not_before, false)?;
    let na = unix_secs(not_after, true)?;
    if nb >= na {
        return Err(CaError::InvalidValidity(format!(
            "not_before {} is not before not_after {}",
            rfc3339(not_before),
            rfc3339(not_after)
        )));
    }
    let to_dt = |secs| {
        OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| CaError::InvalidValidity(e.to_string()))
    };
    Ok((to_dt(nb)?, to_dt(na)?))
}

fn unix_secs(t: SystemTime, round_up: bool) -> Result<i64, CaError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::InvalidValidity("time before 1970".to_owned()))?;
    let secs = d.as_secs() + u64::from(round_up && d.subsec_nanos() > 0);
    i64::try_from(secs).map_err(|_| CaError::InvalidValidity("time out of range".to_owned()))
}

fn system_time(t: OffsetDateTime) -> SystemTime {
    // Only called on times produced by `validity`, which are after 1970.
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or_default())
}

/// 128 random bits: unique serials matter for revocation lists and for telling certificates
/// apart in logs; deriving them from the key (rcgen's default) is unique too but not obviously so.
pub(super) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    super::verify::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Positive and without a leading zero byte, as RFC 5280 serials must be.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// RFC 3339 UTC with second precision, for logs and the config dump.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("<out of range: {secs}s since epoch>"),
    }
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
