//! Certificates for the workloads on this node: fetched as soon as a workload appears,
//! renewed at half-life, forgotten when the workload leaves.
//!
//! Each identity has one task that owns its issuance schedule and publishes results through a
//! `watch` channel. Readers on the connection hot path only take a lock and clone an `Arc`;
//! they wait only for an identity's very first certificate.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ca::{CaError, CertificateAuthority, IssuedCertificate, rfc3339};
use super::spiffe::{SpiffeId, validate_trust_domain};
use super::verify::{TrustAnchors, VerifyError, peer_identity};
use super::workload::WorkloadCertificate;

/// How long `get` waits for an identity's first certificate before giving up; long enough for
/// a remote CA round trip, short enough that a connection attempt fails rather than hangs.
pub const FIRST_ISSUANCE_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed issuance; doubles up to `MAX_RETRY_DELAY`.
pub const INITIAL_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Cap on the retry delay, so a recovered CA is noticed within half a minute.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Floor under the renewal delay, so a provider handing out nearly-expired certificates
/// cannot turn the renewal loop into a busy loop.
const MIN_RENEWAL_DELAY: Duration = Duration::from_millis(500);

/// The future a [`CertificateProvider`] returns.
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<IssuedCertificate, ProviderError>> + Send + 'a>>;

/// Where certificates come from: the local CA in standalone mode, a remote CA otherwise.
pub trait CertificateProvider: Send + Sync + 'static {
    /// Issues a fresh certificate (and key) for `id`.
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a>;
}

/// Why a provider could not issue.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("certificate provider unavailable: {0}")]
    Unavailable(String),
}

/// Why no certificate could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0} has no workload on this node; refusing to hold its certificate")]
    NotLocal(SpiffeId),
    #[error("no certificate for {id} after waiting {waited:?} for its first issuance")]
    Timeout { id: SpiffeId, waited: Duration },
    #[error("no valid certificate for {id}: {reason}")]
    Unavailable { id: SpiffeId, reason: String },
}

/// The standalone CA as a provider, issuing certificates of a fixed lifetime.
#[derive(Debug)]
pub struct LocalCa {
    ca: Arc<CertificateAuthority>,
    lifetime: Duration,
}

impl LocalCa {
    /// A provider issuing `lifetime`-long certificates from `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, lifetime: Duration) -> Self {
        Self { ca, lifetime }
    }
}

impl CertificateProvider for LocalCa {
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        // Signing is a few hundred microseconds of CPU; not worth a blocking-pool hop.
        Box::pin(async move { Ok(self.ca.issue(id, self.lifetime)?) })
    }
}

/// One identity's state as shown in the config dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub identity: SpiffeId,
    /// RFC 3339; absent until a certificate was issued.
    pub not_before: Option<String>,
    /// RFC 3339; absent until a certificate was issued.
    pub not_after: Option<String>,
    /// `valid`, `pending` (first issuance in flight) or `error: <reason>`.
    pub state: String,
    /// The last issuance failure, kept while a still-valid certificate is in use.
    pub last_error: Option<String>,
}

/// Holds and rotates the certificates of the workloads on this node. Cheap to clone; renewal
/// tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct CertificateManager {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn CertificateProvider>,
    roots: TrustAnchors,
    trust_domain: String,
    entries: Mutex<HashMap<SpiffeId, Entry>>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Entry {
    slot: watch::Sender<Slot>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Slot {
    cert: Option<Arc<WorkloadCertificate>>,
    last_error: Option<String>,
    /// At least one issuance attempt finished (successfully or not).
    attempted: bool,
}

impl CertificateManager {
    /// A manager issuing from `provider`, whose peers are verified against `roots` and whose
    /// servers accept clients of `trust_domain`.
    pub fn new(
        provider: Arc<dyn CertificateProvider>,
        roots: Vec<CertificateDer<'static>>,
        trust_domain: String,
    ) -> Result<Self, VerifyError> {
        validate_trust_domain(&trust_domain).map_err(VerifyError::TrustDomain)?;
        let roots = TrustAnchors::new(&roots)?;
        Ok(Self {
            inner: Arc::new(Inner {
                provider,
                roots,
                trust_domain,
                entries: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The trust anchors peers are verified against.
    pub fn trust_anchors(&self) -> &TrustAnchors {
        &self.inner.roots
    }

    /// Declares the identities of the workloads on this node. New identities start issuing at
    /// once so the first connection does not wait; identities no longer listed are dropped
    /// with their renewal task. Identities outside our trust domain are skipped: our servers
    /// would refuse them anyway.
    ///
    /// # Panics
    /// Outside a tokio runtime (renewal tasks are spawned on the current one).
    pub fn set_identities(&self, ids: impl IntoIterator<Item = SpiffeId>) {
        let td = &self.inner.trust_domain;
        let wanted: HashSet<SpiffeId> = ids
            .into_iter()
            .filter(|id| {
                let ours = id.trust_domain() == td;
                if !ours {
                    warn!(identity = %id, trust_domain = %td, "not issuing a certificate outside our trust domain");
                }
                ours
            })
            .collect();
        let mut entries = self.entries();
        entries.retain(|id, entry| {
            let keep = wanted.contains(id);
            if !keep {
                debug!(identity = %id, "workload gone; dropping its certificate");
                entry.cancel.cancel();
            }
            keep
        });
        for id in wanted {
            if entries.contains_key(&id) {
                continue;
            }
            let entry = Entry {
                slot: watch::Sender::new(Slot::default()),
                cancel: self.inner.shutdown.child_token(),
            };
            tokio::spawn(
                Renewal {
                    id: id.clone(),
                    provider: self.inner.provider.clone(),
                    roots: self.inner.roots.clone(),
                    trust_domain: self.inner.trust_domain.clone(),
                    slot: entry.slot.clone(),
                    cancel: entry.cancel.clone(),
                }
                .run(),
            );
            entries.insert(id, entry);
        }
    }

    /// The current certificate for `id`. Without waiting when one is valid; otherwise waits
    /// (up to [`FIRST_ISSUANCE_TIMEOUT`]) only if the first issuance has not finished yet.
    pub async fn get(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        let mut rx = {
            let entries = self.entries();
            let entry = entries
                .get(id)
                .ok_or_else(|| IdentityError::NotLocal(id.clone()))?;
            if let Some(result) = usable(id, &entry.slot.borrow()) {
                return result;
            }
            entry.slot.subscribe()
        };
        let waited = tokio::time::timeout(FIRST_ISSUANCE_TIMEOUT, rx.wait_for(|s| s.attempted));
        match waited.await {
            Ok(Ok(slot)) => usable(id, &slot).unwrap_or_else(|| {
                Err(IdentityError::Unavailable {
                    id: id.clone(),
                    reason: "no certificate".to_owned(),
                })
            }),
            // The sender is gone: the identity was removed while we waited.
            Ok(Err(_)) => Err(IdentityError::NotLocal(id.clone())),
            Err(_) => Err(IdentityError::Timeout {
                id: id.clone(),
                waited: FIRST_ISSUANCE_TIMEOUT,
            }),
        }
    }

    /// Every identity's certificate state, sorted by identity, for `/config_dump`.
    pub fn snapshot(&self) -> Vec<CertificateStatus> {
        let now = SystemTime::now();
        let entries = self.entries();
        let mut out: Vec<CertificateStatus> = entries
            .iter()
            .map(|(id, entry)| {
                let slot = entry.slot.borrow();
                let issued = slot.cert.as_ref().map(|c| &c.issued);
                let state = match (issued, &slot.last_error) {
                    (Some(c), _) if c.is_valid_at(now) => "valid".to_owned(),
                    (_, Some(e)) => format!("error: {e}"),
                    (Some(c), None) => format!("error: {}", invalid_reason(c, now)),
                    (None, None) => "pending".to_owned(),
                };
                CertificateStatus {
                    identity: id.clone(),
                    not_before: issued.map(|c| rfc3339(c.not_before)),
                    not_after: issued.map(|c| rfc3339(c.not_after)),
                    state,
                    last_error: slot.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    // A poisoned lock only means another thread panicked mid-update of a map whose every
    // state is valid, so carrying on beats taking the node's mTLS down.
    fn entries(&self) -> MutexGuard<'_, HashMap<SpiffeId, Entry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for CertificateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateManager")
            .field("trust_domain", &self.inner.trust_domain)
            .field("identities", &self.entries().len())
            .finish_non_exhaustive()
    }
}

/// `Some` when the slot settles the request, `None` when the first issuance is still running.
fn usable(id: &SpiffeId, slot: &Slot) -> Option<Result<Arc<WorkloadCertificate>, IdentityError>> {
    let now = SystemTime::now();
    match (&slot.cert, &slot.last_error) {
        (Some(cert), _) if cert.is_valid_at(now) => Some(Ok(cert.clone())),
        _ if !slot.attempted => None,
        (cert, err) => Some(Err(IdentityError::Unavailable {
            id: id.clone(),
            reason: match (err, cert) {
                (Some(e), _) => e.clone(),
                (None, Some(c)) => invalid_reason(&c.issued, now),
                (None, None) => "no certificate".to_owned(),
            },
        })),
    }
}

fn invalid_reason(c: &IssuedCertificate, now: SystemTime) -> String {
    if now < c.not_before {
        format!("certificate not valid before {}", rfc3339(c.not_before))
    } else {
        format!("certificate expired at {}", rfc3339(c.not_after))
    }
}

/// When to renew: half-way through the certificate's life, counted from when we received it
/// if that is later than `not_before` (CAs backdate `not_before` for clock skew, and counting
/// the backdated minute would renew short-lived certificates almost at once).
fn renewal_delay(issued: &IssuedCertificate, received: SystemTime, now: SystemTime) -> Duration {
    let start = issued.not_before.max(received);
    let half = issued.not_after.duration_since(start).unwrap_or_default() / 2;
    (start + half)
        .duration_since(now)
        .unwrap_or_default()
        .max(MIN_RENEWAL_DELAY)
}

/// The renewal loop of one identity.
struct Renewal {
    id: SpiffeId,
    provider: Arc<dyn CertificateProvider>,
    roots: TrustAnchors,
    trust_domain: String,
    slot: watch::Sender<Slot>,
    cancel: CancellationToken,
}

impl Renewal {
    async fn run(self) {
        let mut retry_delay = INITIAL_RETRY_DELAY;
        loop {
            let result = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = self.provider.issue(&self.id) => r,
            };
            let received = SystemTime::now();
            let delay = match result
                .map_err(|e| e.to_string())
                .and_then(|issued| self.prepare(issued))
            {
                Ok(cert) => {
                    retry_delay = INITIAL_RETRY_DELAY;
                    let delay = renewal_delay(&cert.issued, received, SystemTime::now());
                    info!(
                        identity = %self.id,
                        not_after = %rfc3339(cert.issued.not_after),
                        renew_in = ?delay,
                        "workload certificate issued"
                    );
                    // Replacing the Arc leaves established connections alone: they hold
                    // their own references to the configs they were built from.
                    self.slot.send_modify(|s| {
                        s.cert = Some(Arc::new(cert));
                        s.last_error = None;
                        s.attempted = true;
                    });
                    delay
                }
                Err(reason) => {
                    let now = SystemTime::now();
                    let until_expiry = self
                        .slot
                        .borrow()
                        .cert
                        .as_ref()
                        .filter(|c| c.is_valid_at(now))
                        .and_then(|c| c.issued.not_after.duration_since(now).ok());
                    // Retrying past expiry would leave the workload without a certificate
                    // longer than necessary.
                    let delay = until_expiry.map_or(retry_delay, |d| d.min(retry_delay));
                    warn!(
                        identity = %self.id,
                        error = %reason,
                        retry_in = ?delay,
                        keeping_valid_certificate = until_expiry.is_some(),
                        "workload certificate issuance failed"
                    );
                    self.slot.send_modify(|s| {
                        s.last_error = Some(reason);
                        s.attempted = true;
                    });
                    retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                    delay
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn prepare(&self, issued: IssuedCertificate) -> Result<WorkloadCertificate, String> {
        // Check the certificate itself, not the provider's label for it: serving another
        // workload's certificate would be an identity mix-up peers cannot detect.
        let leaf = issued
            .chain
            .first()
            .ok_or("provider returned an empty certificate chain")?;
        let actual = peer_identity(leaf)
            .map_err(|e| format!("provider returned an unusable certificate: {e}"))?;
        if actual != self.id || issued.identity != self.id {
            return Err(format!("provider returned a certificate for {actual}"));
        }
        WorkloadCertificate::new(issued, self.roots.clone(), &self.trust_domain)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
