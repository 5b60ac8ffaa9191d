use x509_parser::extensions::GeneralName;

use super::*;
use crate::identity::bootstrap::{generate_intermediate, generate_root, init_root_dir};
use crate::identity::test_support::{TestCa, id};

const HOUR: Duration = Duration::from_secs(3600);

fn secs_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn issued_leaf_follows_the_workload_profile() {
    let ca = TestCa::root();
    let before = SystemTime::now();
    let issued = ca.ca.issue(&id("reviews"), HOUR).unwrap();
    assert_eq!(issued.identity, id("reviews"));
    assert_eq!(
        issued.chain.len(),
        1,
        "a root CA adds nothing after the leaf"
    );

    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
    assert_eq!(leaf.subject().iter().count(), 0, "subject must be empty");
    assert!(!leaf.is_ca());
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN is critical when the subject is empty");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(
            "spiffe://cluster.local/ns/default/sa/reviews"
        )]
    );
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);

    let nb = leaf.validity().not_before.timestamp() as u64;
    let na = leaf.validity().not_after.timestamp() as u64;
    assert_eq!(nb, secs_since_epoch(issued.not_before));
    assert_eq!(na, secs_since_epoch(issued.not_after));
    let start = secs_since_epoch(before);
    assert!(nb <= start - 59 && nb >= start - 61, "backdated by 60 s");
    assert!(na >= start + 3600 && na <= start + 3602);
    assert!(issued.is_valid_at(SystemTime::now()));
}

#[test]
fn issued_key_matches_leaf_and_serials_are_random() {
    let ca = TestCa::root();
    let a = ca.issue(&id("a"));
    let b = ca.issue(&id("a"));
    let serial = |i: &IssuedCertificate| {
        let (_, c) = x509_parser::parse_x509_certificate(&i.chain[0]).unwrap();
        c.raw_serial().to_vec()
    };
    assert_ne!(serial(&a), serial(&b));
    assert!(serial(&a).len() >= 16);
    let key = KeyPair::try_from(&a.key).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&a.chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.der_bytes()
    );
}

#[test]
fn issue_with_validity_sets_exact_window_and_refuses_empty_ones() {
    let ca = TestCa::root();
    let nb = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let na = nb + HOUR;
    let issued = ca.ca.issue_with_validity(&id("a"), nb, na).unwrap();
    assert_eq!((issued.not_before, issued.not_after), (nb, na));
    assert!(matches!(
        ca.ca.issue_with_validity(&id("a"), na, nb),
        Err(CaError::InvalidValidity(_))
    ));
}

#[test]
fn leaf_lifetime_is_capped_at_ca_expiry() {
    let ca = TestCa::root();
    let issued = ca.ca.issue(&id("a"), 100 * HOUR).unwrap();
    assert!(issued.not_after <= ca.ca.not_after());
}

#[test]
fn intermediate_ca_sends_itself_but_not_the_root() {
    let ca = TestCa::intermediate();
    let issued = ca.issue(&id("a"));
    assert_eq!(issued.chain.len(), 2);
    assert_eq!(issued.chain[1], ca.intermediates[0]);
    assert_eq!(ca.ca.trust_bundle().len(), 1);
    assert_ne!(ca.ca.trust_bundle()[0], ca.intermediates[0]);
}

#[test]
fn istio_style_chain_file_is_deduplicated() {
    let (root_pem, root_key) = generate_root("root", HOUR).unwrap();
    let (mid_pem, mid_key) = generate_intermediate(&root_pem, &root_key, "mid", HOUR).unwrap();
    let (ca_pem, ca_key) = generate_intermediate(&mid_pem, &mid_key, "issuing", HOUR).unwrap();
    // cert-chain.pem: issuing cert, then intermediates, then the root.
    let chain = format!("{ca_pem}{mid_pem}{root_pem}");
    let ca =
        CertificateAuthority::from_pem(&ca_pem, &ca_key, Some(&chain), Some(&root_pem)).unwrap();
    let issued = ca.issue(&id("a"), HOUR).unwrap();
    let expected: Vec<_> = [&ca_pem, &mid_pem]
        .iter()
        .map(|p| pem::certificates(p, "t").unwrap().remove(0))
        .collect();
    assert_eq!(issued.chain[1..], expected[..]);
}

#[test]
fn refuses_key_that_does_not_match_certificate() {
    let (cert, _) = generate_root("a", HOUR).unwrap();
    let (_, other_key) = generate_root("b", HOUR).unwrap();
    let err = CertificateAuthority::from_pem(&cert, &other_key, None, None).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
}

#[test]
fn refuses_certificate_that_is_not_a_ca() {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["a.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let err =
        CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem(), None, None).unwrap_err();
    assert!(matches!(err, CaError::NotCa(_)), "{err}");
}

#[test]
fn intermediate_without_bundle_is_refused() {
    let (root, root_key) = generate_root("root", HOUR).unwrap();
    let (mid, mid_key) = generate_intermediate(&root, &root_key, "mid", HOUR).unwrap();
    let err = CertificateAuthority::from_pem(&mid, &mid_key, None, None).unwrap_err();
    assert!(matches!(err, CaError::BundleRequired(_)), "{err}");
}

#[test]
fn bundle_without_our_root_fails_the_self_test() {
    let (root, root_key) = generate_root("root", HOUR).unwrap();
    let (mid, mid_key) = generate_intermediate(&root, &root_key, "mid", HOUR).unwrap();
    let (unrelated, _) = generate_root("unrelated", HOUR).unwrap();
    let err = CertificateAuthority::from_pem(&mid, &mid_key, None, Some(&unrelated)).unwrap_err();
    assert!(matches!(err, CaError::SelfTest(_)), "{err}");
}

#[test]
fn chain_gap_fails_the_self_test() {
    let (root, root_key) = generate_root("root", HOUR).unwrap();
    let (mid, mid_key) = generate_intermediate(&root, &root_key, "mid", HOUR).unwrap();
    let (ca, ca_key) = generate_intermediate(&mid, &mid_key, "issuing", HOUR).unwrap();
    // Without the chain file, peers cannot get from "issuing" to the root.
    let err = CertificateAuthority::from_pem(&ca, &ca_key, None, Some(&root)).unwrap_err();
    assert!(matches!(err, CaError::SelfTest(_)), "{err}");
}

#[test]
fn load_names_the_file_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let files = init_root_dir(dir.path(), HOUR).unwrap();
    CertificateAuthority::load(&files.cert_path, &files.key_path, None, None).unwrap();

    let missing = dir.path().join("nope.pem");
    let err = CertificateAuthority::load(&files.cert_path, &missing, None, None).unwrap_err();
    assert!(matches!(err, CaError::Read { .. }));
    assert!(err.to_string().contains("nope.pem"), "{err}");

    let garbage = dir.path().join("garbage-key.pem");
    fs::write(&garbage, "not a key").unwrap();
    let err = CertificateAuthority::load(&files.cert_path, &garbage, None, None).unwrap_err();
    assert!(err.to_string().contains("garbage-key.pem"), "{err}");

    // The key file is a valid key for some other cert: both files are named.
    let (_, other_key) = generate_root("other", HOUR).unwrap();
    let other = dir.path().join("other-key.pem");
    fs::write(&other, other_key).unwrap();
    let err = CertificateAuthority::load(&files.cert_path, &other, None, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("other-key.pem") && msg.contains("root-cert.pem"),
        "{msg}"
    );
}

#[test]
fn rfc3339_formats_utc_seconds() {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
}
