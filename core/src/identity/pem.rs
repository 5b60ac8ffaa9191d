//! Reading CA material from PEM text.
//!
//! Operators bring keys made by whatever tool they have (openssl, cfssl, step, Istio's
//! Makefiles), so the key reader accepts the three unencrypted encodings those tools emit and
//! converts them to PKCS#8, the only one our signing backend (*ring*) loads.

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why PEM input could not be used. `source` names the input (a file path or a role such as
/// "trust bundle") so the operator knows which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{source_name}: not valid PEM: {reason}")]
    Malformed { source_name: String, reason: String },
    #[error("{source_name}: no CERTIFICATE block found")]
    NoCertificate { source_name: String },
    #[error("{source_name}: no private key found")]
    NoKey { source_name: String },
    #[error("{source_name}: the private key is encrypted; provide it unencrypted (file mode 0600)")]
    EncryptedKey { source_name: String },
    #[error("{source_name}: holds more than one private key; expected exactly one")]
    MultipleKeys { source_name: String },
    #[error(
        "{source_name}: unsupported private key ({reason}); use ECDSA P-256/P-384, Ed25519 or RSA"
    )]
    UnsupportedKey { source_name: String, reason: String },
}

/// All certificates in `pem`, in file order (which is chain order for chain files).
pub(crate) fn certificates(
    pem: &str,
    source_name: &str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut certs = Vec::new();
    for item in rustls_pemfile::read_all(&mut pem.as_bytes()) {
        let item = item.map_err(|e| PemError::Malformed {
            source_name: source_name.to_owned(),
            reason: e.to_string(),
        })?;
        if let rustls_pemfile::Item::X509Certificate(der) = item {
            certs.push(der);
        }
    }
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            source_name: source_name.to_owned(),
        });
    }
    Ok(certs)
}

/// PEM text for `certs`, one CERTIFICATE block each, in order.
pub fn certificates_pem(certs: &[CertificateDer<'_>]) -> String {
    let blocks: Vec<::pem::Pem> = certs
        .iter()
        .map(|c| ::pem::Pem::new("CERTIFICATE", c.as_ref()))
        .collect();
    ::pem::encode_many(&blocks)
}

/// The single private key in `pem`, loaded as a signing key.
pub(crate) fn key_pair(pem: &str, source_name: &str) -> Result<rcgen::KeyPair, PemError> {
    let src = || source_name.to_owned();
    let mut keys = Vec::new();
    for item in rustls_pemfile::read_all(&mut pem.as_bytes()) {
        let item = item.map_err(|e| PemError::Malformed {
            source_name: src(),
            reason: e.to_string(),
        })?;
        match item {
            rustls_pemfile::Item::Pkcs8Key(k) => keys.push(PrivateKeyDer::Pkcs8(k)),
            rustls_pemfile::Item::Pkcs1Key(k) => keys.push(PrivateKeyDer::Pkcs1(k)),
            rustls_pemfile::Item::Sec1Key(k) => keys.push(PrivateKeyDer::Sec1(k)),
            _ => {}
        }
    }
    let key = match keys.len() {
        1 => keys.remove(0),
        0 if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            return Err(PemError::EncryptedKey { source_name: src() });
        }
        0 => return Err(PemError::NoKey { source_name: src() }),
        _ => return Err(PemError::MultipleKeys { source_name: src() }),
    };
    let unsupported = |reason: &str| PemError::UnsupportedKey {
        source_name: src(),
        reason: reason.to_owned(),
    };
    match key {
        PrivateKeyDer::Pkcs8(k) => {
            rcgen::KeyPair::try_from(&k).map_err(|e| unsupported(&e.to_string()))
        }
        PrivateKeyDer::Pkcs1(k) => {
            let pkcs8 = wrap_pkcs8(OID_RSA_ENCRYPTION_ALG, k.secret_pkcs1_der());
            rcgen::KeyPair::try_from(&pkcs8).map_err(|e| unsupported(&e.to_string()))
        }
        PrivateKeyDer::Sec1(k) => {
            // SEC1 keys may omit their curve, so try each curve we can sign with; ring checks
            // the embedded public key against the private scalar, so a wrong guess fails
            // instead of producing a wrong key.
            [OID_EC_P256_ALG, OID_EC_P384_ALG]
                .iter()
                .find_map(|alg| {
                    rcgen::KeyPair::try_from(&wrap_pkcs8(alg, k.secret_sec1_der())).ok()
                })
                .ok_or_else(|| {
                    unsupported("EC key on an unsupported curve, or without its public key")
                })
        }
        _ => Err(unsupported("unknown key encoding")),
    }
}

/// AlgorithmIdentifier contents: rsaEncryption OID followed by NULL parameters.
const OID_RSA_ENCRYPTION_ALG: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// AlgorithmIdentifier contents: id-ecPublicKey with the prime256v1 curve.
const OID_EC_P256_ALG: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];
/// AlgorithmIdentifier contents: id-ecPublicKey with the secp384r1 curve.
const OID_EC_P384_ALG: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
];

/// PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING key }
fn wrap_pkcs8(alg_id_contents: &[u8], inner_key: &[u8]) -> PrivatePkcs8KeyDer<'static> {
    let mut body = vec![0x02, 0x01, 0x00];
    der_tlv(0x30, alg_id_contents, &mut body);
    der_tlv(0x04, inner_key, &mut body);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_tlv(0x30, &body, &mut out);
    PrivatePkcs8KeyDer::from(out)
}

fn der_tlv(tag: u8, contents: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn reads_pkcs8_key() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let back = key_pair(&kp.serialize_pem(), "k").unwrap();
        assert_eq!(back.der_bytes(), kp.der_bytes());
    }

    #[test]
    fn reads_sec1_key_by_unwrapping_pkcs8() {
        // rcgen only writes PKCS#8, so build the SEC1 form by stripping the PKCS#8 wrapper
        // (the inner OCTET STRING of a ring-generated key is a complete SEC1 ECPrivateKey).
        let kp = rcgen::KeyPair::generate().unwrap();
        let pkcs8 = kp.serialize_der();
        let sec1 = inner_octet_string(&pkcs8);
        let pem = pem_block("EC PRIVATE KEY", sec1);
        let back = key_pair(&pem, "k").unwrap();
        assert_eq!(back.der_bytes(), kp.der_bytes());
    }

    #[test]
    fn refuses_missing_multiple_and_encrypted_keys() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let two = format!("{}{}", kp.serialize_pem(), kp.serialize_pem());
        assert!(matches!(
            key_pair(&two, "k"),
            Err(PemError::MultipleKeys { .. })
        ));
        assert!(matches!(key_pair("", "k"), Err(PemError::NoKey { .. })));
        let enc = pem_block("ENCRYPTED PRIVATE KEY", &[1, 2, 3]);
        let err = key_pair(&enc, "/etc/weft/ca-key.pem").unwrap_err();
        assert!(matches!(err, PemError::EncryptedKey { .. }));
        assert!(err.to_string().contains("/etc/weft/ca-key.pem"), "{err}");
    }

    #[test]
    fn refuses_pem_without_certificates() {
        let err = certificates("hello", "bundle.pem").unwrap_err();
        assert!(matches!(err, PemError::NoCertificate { .. }));
        assert!(err.to_string().contains("bundle.pem"));
    }

    #[test]
    fn der_lengths_use_long_form_above_127() {
        let mut out = Vec::new();
        der_tlv(0x04, &[0u8; 300], &mut out);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(out.len(), 304);
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        let b64 = base64_encode(der);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    }

    // A minimal encoder keeps the test free of a base64 dependency.
    fn base64_encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    /// The contents of the last top-level OCTET STRING in a PKCS#8 PrivateKeyInfo.
    fn inner_octet_string(pkcs8: &[u8]) -> &[u8] {
        let (_, body) = read_tlv(pkcs8);
        let mut rest = body;
        loop {
            let (tag, contents) = read_tlv(rest);
            let consumed = header_len(rest) + contents.len();
            if tag == 0x04 {
                return contents;
            }
            rest = &rest[consumed..];
        }
    }

    fn header_len(b: &[u8]) -> usize {
        if b[1] < 0x80 {
            2
        } else {
            2 + usize::from(b[1] & 0x7f)
        }
    }

    fn read_tlv(b: &[u8]) -> (u8, &[u8]) {
        let h = header_len(b);
        let len = if b[1] < 0x80 {
            usize::from(b[1])
        } else {
            b[2..h]
                .iter()
                .fold(0usize, |a, x| (a << 8) | usize::from(*x))
        };
        (b[0], &b[h..h + len])
    }
}
