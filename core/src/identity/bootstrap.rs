//! Making new CA material: the root and intermediates behind `weftd ca init`, and the CAs
//! tests run against. Loading and signing live in `ca`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::ca::{CLOCK_SKEW_ALLOWANCE, CaError, check_ca_cert, random_serial, validity};
use super::pem;

/// Where `init_root_dir` wrote the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFiles {
    /// `root-cert.pem`: the trust anchor to distribute.
    pub cert_path: PathBuf,
    /// `root-key.pem`: the signing key, readable by its owner only.
    pub key_path: PathBuf,
}

/// Generates a self-signed root CA (ECDSA P-256) and returns `(cert_pem, key_pem)`.
pub fn generate_root(common_name: &str, lifetime: Duration) -> Result<(String, String), CaError> {
    let params = ca_params(common_name, lifetime, None)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates an intermediate CA signed by the given parent and returns `(cert_pem, key_pem)`.
/// Its lifetime is capped at the parent's expiry.
pub fn generate_intermediate(
    parent_cert_pem: &str,
    parent_key_pem: &str,
    common_name: &str,
    lifetime: Duration,
) -> Result<(String, String), CaError> {
    let parent = pem::certificates(parent_cert_pem, "parent CA certificate")?.remove(0);
    let parent_key = pem::key_pair(parent_key_pem, "parent CA key")?;
    let info = check_ca_cert(
        &parent,
        "parent CA certificate",
        &parent_key,
        "parent CA key",
    )?;
    let issuer = Issuer::from_ca_cert_der(&parent, parent_key)?;
    let mut params = ca_params(common_name, lifetime, Some(info.not_after))?;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Creates a new root in `dir` as `root-cert.pem` and `root-key.pem` (mode 0600). Refuses to
/// overwrite either file: replacing a root silently would cut every workload off the mesh.
pub fn init_root_dir(dir: &Path, lifetime: Duration) -> Result<RootFiles, CaError> {
    let files = RootFiles {
        cert_path: dir.join("root-cert.pem"),
        key_path: dir.join("root-key.pem"),
    };
    for path in [&files.cert_path, &files.key_path] {
        if path.exists() {
            return Err(CaError::AlreadyExists(path.clone()));
        }
    }
    let (cert_pem, key_pem) = generate_root("weft root CA", lifetime)?;
    fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_new(&files.key_path, &key_pem, 0o600)?;
    if let Err(e) = write_new(&files.cert_path, &cert_pem, 0o644) {
        // A key without its certificate is useless and would block the next attempt.
        let _ = fs::remove_file(&files.key_path);
        return Err(e);
    }
    Ok(files)
}

// create_new closes the race between the exists() check and the write.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::AlreadyExists(path.to_owned())
            } else {
                err(source)
            }
        })?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

fn ca_params(
    common_name: &str,
    lifetime: Duration,
    cap: Option<SystemTime>,
) -> Result<CertificateParams, CaError> {
    let now = SystemTime::now();
    let mut not_after = now
        .checked_add(lifetime)
        .ok_or_else(|| CaError::InvalidValidity(format!("lifetime {lifetime:?} too large")))?;
    if let Some(cap) = cap {
        not_after = not_after.min(cap);
    }
    let (not_before, not_after) = validity(now - CLOCK_SKEW_ALLOWANCE, not_after)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn init_root_dir_writes_private_key_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ca");
        let files = init_root_dir(&target, HOUR).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.key_path), 0o600);
        assert_eq!(files.cert_path, target.join("root-cert.pem"));
        let before = fs::read(&files.key_path).unwrap();

        let err = init_root_dir(&target, HOUR).unwrap_err();
        assert!(matches!(err, CaError::AlreadyExists(_)), "{err}");
        assert_eq!(fs::read(&files.key_path).unwrap(), before);

        // A lone leftover key also blocks initialization.
        fs::remove_file(&files.cert_path).unwrap();
        assert!(matches!(
            init_root_dir(&target, HOUR),
            Err(CaError::AlreadyExists(p)) if p == files.key_path
        ));
    }
}
