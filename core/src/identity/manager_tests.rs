//! Rotation tests run on real time with certificates that live a few seconds, because the
//! validity checks (ours and rustls') read the system clock, which tokio cannot pause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::identity::test_support::{TD, TestCa, id, ping_pong};

/// Wraps the local CA with knobs: fail on demand, delay, and count calls per identity.
struct TestProvider {
    ca: LocalCa,
    failing: AtomicBool,
    delay: Duration,
    calls: Mutex<HashMap<SpiffeId, usize>>,
}

impl TestProvider {
    fn new(ca: &TestCa, lifetime: Duration) -> Arc<Self> {
        let ca = CertificateAuthority::from_pem(&ca.cert_pem, &ca.key_pem, None, None).unwrap();
        Arc::new(Self {
            ca: LocalCa::new(Arc::new(ca), lifetime),
            failing: AtomicBool::new(false),
            delay: Duration::ZERO,
            calls: Mutex::new(HashMap::new()),
        })
    }

    fn calls(&self, id: &SpiffeId) -> usize {
        self.calls.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl CertificateProvider for TestProvider {
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        Box::pin(async move {
            *self.calls.lock().unwrap().entry(id.clone()).or_default() += 1;
            tokio::time::sleep(self.delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(ProviderError::Unavailable("CA is down (test)".to_owned()));
            }
            self.ca.issue(id).await
        })
    }
}

fn manager(ca: &TestCa, provider: Arc<TestProvider>) -> CertificateManager {
    CertificateManager::new(provider, ca.ca.trust_bundle().to_vec(), TD.to_owned()).unwrap()
}

/// Polls until `f` holds, failing the test after `limit`.
async fn eventually(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn renews_at_half_life_with_a_new_certificate() {
    let ca = TestCa::root();
    let provider = TestProvider::new(&ca, Duration::from_secs(4));
    let mgr = manager(&ca, provider.clone());
    mgr.set_identities([id("a")]);
    let first = mgr.get(&id("a")).await.unwrap();
    let issued_at = Instant::now();

    // Lifetime 4 s (rounded up to whole seconds): renewal is due 2-2.5 s after issuance.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(Arc::ptr_eq(&first, &mgr.get(&id("a")).await.unwrap()));

    eventually(Duration::from_secs(4), "renewal", async || {
        !Arc::ptr_eq(&first, &mgr.get(&id("a")).await.unwrap())
    })
    .await;
    let renewed_after = issued_at.elapsed();
    assert!(
        renewed_after >= Duration::from_millis(1500) && renewed_after < Duration::from_secs(4),
        "renewed after {renewed_after:?}"
    );
    let second = mgr.get(&id("a")).await.unwrap();
    assert_ne!(second.issued.chain[0], first.issued.chain[0]);
    assert!(second.issued.not_after > first.issued.not_after);
    assert_eq!(provider.calls(&id("a")), 2);
}

#[tokio::test]
async fn failing_provider_keeps_the_valid_certificate_and_recovers() {
    let ca = TestCa::root();
    let provider = TestProvider::new(&ca, Duration::from_secs(5));
    let mgr = manager(&ca, provider.clone());
    mgr.set_identities([id("a")]);
    let first = mgr.get(&id("a")).await.unwrap();
    provider.set_failing(true);

    // The renewal at half-life fails...
    eventually(Duration::from_secs(5), "a failed renewal", async || {
        provider.calls(&id("a")) >= 2
    })
    .await;
    eventually(
        Duration::from_secs(1),
        "the failure to be recorded",
        async || mgr.snapshot()[0].last_error.is_some(),
    )
    .await;
    // ...and the still-valid certificate keeps being served.
    assert!(Arc::ptr_eq(&first, &mgr.get(&id("a")).await.unwrap()));
    let status = &mgr.snapshot()[0];
    assert_eq!(status.state, "valid");
    assert!(
        status.last_error.as_deref().unwrap().contains("CA is down"),
        "{status:?}"
    );

    provider.set_failing(false);
    eventually(Duration::from_secs(4), "recovery", async || {
        !Arc::ptr_eq(&first, &mgr.get(&id("a")).await.unwrap())
    })
    .await;
    assert_eq!(mgr.snapshot()[0].last_error, None);
}

#[tokio::test]
async fn unknown_identity_is_not_local() {
    let ca = TestCa::root();
    let mgr = manager(&ca, TestProvider::new(&ca, Duration::from_secs(60)));
    mgr.set_identities([id("a")]);
    let err = mgr.get(&id("stranger")).await.unwrap_err();
    assert!(
        matches!(err, IdentityError::NotLocal(ref i) if *i == id("stranger")),
        "{err}"
    );
}

#[tokio::test]
async fn foreign_trust_domain_identities_are_not_issued() {
    let ca = TestCa::root();
    let provider = TestProvider::new(&ca, Duration::from_secs(60));
    let mgr = manager(&ca, provider.clone());
    let foreign = SpiffeId::new("other.td", "default", "a").unwrap();
    mgr.set_identities([foreign.clone()]);
    assert!(matches!(
        mgr.get(&foreign).await,
        Err(IdentityError::NotLocal(_))
    ));
    assert_eq!(provider.calls(&foreign), 0);
}

#[tokio::test]
async fn removing_an_identity_drops_its_certificate_and_stops_renewal() {
    let ca = TestCa::root();
    let provider = TestProvider::new(&ca, Duration::from_secs(2));
    let mgr = manager(&ca, provider.clone());
    mgr.set_identities([id("a"), id("b")]);
    mgr.get(&id("a")).await.unwrap();
    mgr.get(&id("b")).await.unwrap();

    mgr.set_identities([id("b")]);
    assert!(matches!(
        mgr.get(&id("a")).await,
        Err(IdentityError::NotLocal(_))
    ));
    let ids: Vec<_> = mgr.snapshot().into_iter().map(|s| s.identity).collect();
    assert_eq!(ids, [id("b")]);

    // b keeps renewing (every ~1 s) while a's task is gone.
    let a_calls = provider.calls(&id("a"));
    let b_calls = provider.calls(&id("b"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(provider.calls(&id("a")), a_calls);
    assert!(provider.calls(&id("b")) > b_calls);
}

#[tokio::test]
async fn dropping_the_manager_stops_renewal() {
    let ca = TestCa::root();
    let provider = TestProvider::new(&ca, Duration::from_secs(2));
    let mgr = manager(&ca, provider.clone());
    mgr.set_identities([id("a")]);
    mgr.get(&id("a")).await.unwrap();
    let clone = mgr.clone();
    drop(mgr);
    drop(clone);
    let calls = provider.calls(&id("a"));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(provider.calls(&id("a")), calls);
}

#[tokio::test]
async fn get_waits_for_the_first_issuance() {
    let ca = TestCa::root();
    let mut provider = TestProvider::new(&ca, Duration::from_secs(60));
    Arc::get_mut(&mut provider).unwrap().delay = Duration::from_millis(300);
    let mgr = manager(&ca, provider.clone());
    mgr.set_identities([id("a")]);
    assert_eq!(mgr.snapshot()[0].state, "pending");
    let cert = mgr.get(&id("a")).await.unwrap();
    assert_eq!(cert.identity(), &id("a"));
    assert_eq!(mgr.snapshot()[0].state, "valid");
}

#[tokio::test]
async fn get_fails_fast_when_the_first_issuance_failed() {
    let ca = TestCa::root();
    let provider = TestProvider::new(&ca, Duration::from_secs(60));
    provider.set_failing(true);
    let mgr = manager(&ca, provider.clone());
    mgr.set_identities([id("a")]);
    let err = mgr.get(&id("a")).await.unwrap_err();
    assert!(
        matches!(&err, IdentityError::Unavailable { reason, .. } if reason.contains("CA is down")),
        "{err}"
    );
    let status = &mgr.snapshot()[0];
    assert!(status.state.starts_with("error: "), "{status:?}");
    assert_eq!(status.not_after, None);
}

#[tokio::test]
async fn snapshot_serializes_times_as_rfc3339() {
    let ca = TestCa::root();
    let mgr = manager(&ca, TestProvider::new(&ca, Duration::from_secs(60)));
    mgr.set_identities([id("a")]);
    let cert = mgr.get(&id("a")).await.unwrap();
    let json = serde_json::to_value(mgr.snapshot()).unwrap();
    assert_eq!(
        json[0]["identity"],
        "spiffe://cluster.local/ns/default/sa/a"
    );
    assert_eq!(json[0]["state"], "valid");
    assert_eq!(json[0]["notAfter"], rfc3339(cert.issued.not_after));
    let not_after = json[0]["notAfter"].as_str().unwrap();
    assert!(
        not_after.ends_with('Z') && not_after.len() == 20,
        "{not_after}"
    );
}

#[tokio::test]
async fn established_connection_survives_certificate_renewal() {
    let ca = TestCa::root();
    let provider = TestProvider::new(&ca, Duration::from_secs(3));
    let mgr = manager(&ca, provider);
    mgr.set_identities([id("client"), id("server")]);
    let client_cert = mgr.get(&id("client")).await.unwrap();
    let server_cert = mgr.get(&id("server")).await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_cert.server_config());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.unwrap()
    });
    let connector = TlsConnector::from(client_cert.client_config(&id("server")).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut client = connector.connect(name, tcp).await.unwrap();
    let mut server = accept.await.unwrap();
    ping_pong(&mut client, &mut server).await;

    eventually(
        Duration::from_secs(4),
        "renewal of both certificates",
        async || {
            let c = mgr.get(&id("client")).await.unwrap();
            let s = mgr.get(&id("server")).await.unwrap();
            !Arc::ptr_eq(&c, &client_cert) && !Arc::ptr_eq(&s, &server_cert)
        },
    )
    .await;
    ping_pong(&mut client, &mut server).await;

    // Even once the certificates it was established with have expired.
    let expiry = client_cert
        .issued
        .not_after
        .max(server_cert.issued.not_after);
    if let Ok(wait) = expiry.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(100)).await;
    }
    assert!(!client_cert.is_valid_at(SystemTime::now()));
    ping_pong(&mut client, &mut server).await;
}
