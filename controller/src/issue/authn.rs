//! Who is calling: the bearer token checked with a Kubernetes `TokenReview`.
//!
//! The API server, not the controller, decides whether a token is valid, unexpired, bound to a
//! live pod and meant for us (the audience), so a stolen token dies with its pod.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use weft_core::identity::SpiffeId;

use super::Refusal;

/// The `extra` keys a bound service-account token carries about its pod.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's own identity: its service account in our trust domain.
    pub identity: SpiffeId,
    /// The pod the token is bound to (name, uid), when it is a pod-bound token.
    pub pod: Option<(String, String)>,
}

/// Checks tokens against the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audiences: Vec<String>,
    trust_domain: String,
}

impl TokenReviewer {
    /// Accepts tokens issued for one of `audiences`.
    pub fn new(client: Client, audiences: Vec<String>, trust_domain: String) -> Self {
        Self {
            client,
            audiences,
            trust_domain,
        }
    }

    /// The caller behind `token`, or why it is not accepted.
    pub async fn review(&self, token: &str) -> Result<Caller, Refusal> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::ApiUnavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(Refusal::TokenRejected(why));
        }
        // An empty audience list in the answer means the API server's own audience, which is
        // not ours.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(Refusal::TokenRejected(format!(
                "the token is not meant for this CA (audiences {audiences:?}, want one of {:?})",
                self.audiences
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(Refusal::TokenRejected(format!(
                "{username:?} is not a service account"
            )));
        };
        let identity = SpiffeId::new(&self.trust_domain, namespace, account).map_err(|e| {
            Refusal::TokenRejected(format!("service account {namespace}/{account}: {e}"))
        })?;
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let pod = first(POD_NAME).zip(first(POD_UID));
        Ok(Caller { identity, pod })
    }
}
