//! `CreateCertificate`: authenticate the caller ([`authn`]), decide whether it may hold the
//! identity it asks for ([`authz`]), and sign the CSR's public key for exactly that identity.
//!
//! Every refusal is a gRPC status a caller can act on (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
//! `INVALID_ARGUMENT`, `UNAVAILABLE`) and is counted by reason.

pub mod authn;
pub mod authz;

use std::sync::Arc;
use std::time::Duration;

use prost_types::value::Kind;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_core::identity::protocol::istio_certificate_service_server::IstioCertificateService;
use weft_core::identity::protocol::{
    IMPERSONATED_IDENTITY, IstioCertificateRequest, IstioCertificateResponse, Roots,
};
use weft_core::identity::{CertificateAuthority, CsrError, SpiffeId, certificates_pem};

use crate::metrics::IssueMetrics;
use authn::TokenReviewer;
use authz::NodeAuthorizer;

/// Why a request was not granted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token in the `authorization` metadata")]
    NoToken,
    #[error("the token was rejected: {0}")]
    TokenRejected(String),
    #[error("{caller} may request only its own identity, not {requested}")]
    NotNodeAgent { caller: String, requested: String },
    #[error("{0} is a control-plane identity: only its own pods may request it")]
    ControlPlaneIdentity(String),
    #[error("{0}'s token is not bound to a pod, so its node is unknown; use a projected token")]
    Unbound(String),
    #[error("the caller's pod {0} no longer exists or is not scheduled")]
    CallerPodGone(String),
    #[error("no pod of {requested} is scheduled on node {node}")]
    NotOnNode { requested: String, node: String },
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Csr(#[from] Box<CsrError>),
    #[error("the Kubernetes API is unavailable: {0}")]
    ApiUnavailable(String),
}

impl Refusal {
    /// A short, stable label for the `reason` of the refused-requests metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::TokenRejected(_) => "token_rejected",
            Self::NotNodeAgent { .. } => "not_node_agent",
            Self::ControlPlaneIdentity(_) => "control_plane_identity",
            Self::Unbound(_) | Self::CallerPodGone(_) => "caller_unbound",
            Self::NotOnNode { .. } => "not_on_node",
            Self::BadRequest(_) => "bad_request",
            Self::Csr(e) => e.reason(),
            Self::ApiUnavailable(_) => "api_unavailable",
        }
    }

    fn status(&self) -> Status {
        let message = self.to_string();
        match self {
            Self::NoToken | Self::TokenRejected(_) => Status::unauthenticated(message),
            Self::NotNodeAgent { .. }
            | Self::ControlPlaneIdentity(_)
            | Self::Unbound(_)
            | Self::CallerPodGone(_)
            | Self::NotOnNode { .. } => Status::permission_denied(message),
            Self::BadRequest(_) => Status::invalid_argument(message),
            // The caller's input was wrong; a CA that cannot sign is our fault.
            Self::Csr(e) => match **e {
                CsrError::Ca(_) => Status::internal(message),
                _ => Status::invalid_argument(message),
            },
            Self::ApiUnavailable(_) => Status::unavailable(message),
        }
    }
}

/// Lifetimes the CA grants.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// When the request asks for none.
    pub default: Duration,
    /// The most a request can get.
    pub max: Duration,
}

/// The certificate service.
pub struct CertificateService {
    ca: Arc<CertificateAuthority>,
    /// The trust bundle as the answers carry it, one PEM per root; the bundle never changes
    /// while the process runs, so it is encoded once.
    roots: Vec<String>,
    trust_domain: String,
    reviewer: TokenReviewer,
    authorizer: NodeAuthorizer,
    lifetimes: Lifetimes,
    metrics: IssueMetrics,
}

impl CertificateService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        trust_domain: String,
        reviewer: TokenReviewer,
        authorizer: NodeAuthorizer,
        lifetimes: Lifetimes,
        metrics: IssueMetrics,
    ) -> Self {
        let roots = ca
            .trust_bundle()
            .iter()
            .map(|c| certificates_pem(std::slice::from_ref(c)))
            .collect();
        Self {
            ca,
            roots,
            trust_domain,
            reviewer,
            authorizer,
            lifetimes,
            metrics,
        }
    }

    async fn handle(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<(IstioCertificateResponse, SpiffeId, String), Refusal> {
        let token = bearer(request.metadata())?;
        let caller = self.reviewer.review(&token).await?;
        let request = request.into_inner();
        let requested = match impersonated(&request)? {
            Some(id) => id,
            None => caller.identity.clone(),
        };
        if requested.trust_domain() != self.trust_domain {
            return Err(Refusal::BadRequest(format!(
                "{requested} is not in this mesh's trust domain {}",
                self.trust_domain
            )));
        }
        let node = self.authorizer.authorize(&caller, &requested).await?;
        let lifetime = match u64::try_from(request.validity_duration) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.lifetimes.max),
            _ => self.lifetimes.default,
        };
        let signed = self
            .ca
            .sign_request(&request.csr, &requested, lifetime)
            .map_err(Box::new)?;
        let mut chain: Vec<String> = signed
            .chain
            .iter()
            .map(|c| certificates_pem(std::slice::from_ref(c)))
            .collect();
        // Leaf first, root last, as Istio answers; newer clients read `root_cert` instead.
        chain.extend(self.roots.iter().cloned());
        let by = match node {
            Some(node) => format!("{} for node {node}", caller.identity),
            None => caller.identity.to_string(),
        };
        Ok((
            IstioCertificateResponse {
                cert_chain: chain,
                root_cert: Some(Roots {
                    ca_cert: self.roots.clone(),
                }),
            },
            requested,
            by,
        ))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        match self.handle(request).await {
            Ok((response, identity, by)) => {
                self.metrics.issued();
                info!(%identity, requested_by = %by, %peer, "issued a workload certificate");
                Ok(Response::new(response))
            }
            Err(refusal) => {
                self.metrics.refused(refusal.reason());
                warn!(%peer, reason = refusal.reason(), "refused a certificate request: {refusal}");
                Err(refusal.status())
            }
        }
    }
}

fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<String, Refusal> {
    let value = metadata.get("authorization").ok_or(Refusal::NoToken)?;
    let text = value.to_str().map_err(|_| Refusal::NoToken)?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::NoToken)?;
    Ok(token.to_owned())
}

/// The identity a node agent asks for on a workload's behalf, if it does.
fn impersonated(request: &IstioCertificateRequest) -> Result<Option<SpiffeId>, Refusal> {
    let Some(field) = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &field.kind {
        Some(Kind::StringValue(s)) => s.parse().map(Some).map_err(|e| {
            Refusal::BadRequest(format!(
                "{IMPERSONATED_IDENTITY} {s:?} is not a SPIFFE id: {e}"
            ))
        }),
        _ => Err(Refusal::BadRequest(format!(
            "{IMPERSONATED_IDENTITY} must be a string"
        ))),
    }
}
