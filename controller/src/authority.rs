//! Where the mesh CA's key comes from, and how its root reaches the nodes.
//!
//! Either an operator mounts CA files (Istio's `cacerts` layout, so an existing Istio CA or a
//! corporate intermediate drops in), or the controller keeps the CA in a Secret in its own
//! namespace and creates it, with a new self-signed root, on first start. Replicas racing to
//! create it settle on whichever create the API server accepted first. The root is then
//! published in a ConfigMap that weftd reads to trust the mesh (and this controller).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tracing::info;
use weft_core::identity::{CaError, CertificateAuthority, certificates_pem, generate_root};

/// File and Secret keys, as Istio's `cacerts` names them.
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

/// Where the CA is kept.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A directory holding `ca-cert.pem`, `ca-key.pem` and optionally `cert-chain.pem` and
    /// `root-cert.pem`.
    Files(PathBuf),
    /// A Secret with the same keys; created with a new root when missing.
    Secret { namespace: String, name: String },
}

/// Why the CA could not be loaded or published.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("CA files in {dir}: {source}")]
    Files { dir: PathBuf, source: CaError },
    #[error("CA Secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("generating a new root: {0}")]
    Generate(CaError),
    #[error("publishing the root in ConfigMap {namespace}/{name}: {source}")]
    Publish {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// The loaded CA and where it came from (for logs).
pub struct Authority {
    pub ca: CertificateAuthority,
    pub origin: String,
}

/// Loads the CA from `source`; for a Secret, creates one with a root valid for
/// `root_lifetime` when none exists.
pub async fn load(
    source: &CaSource,
    client: &Client,
    root_lifetime: Duration,
) -> Result<Authority, AuthorityError> {
    match source {
        CaSource::Files(dir) => from_files(dir),
        CaSource::Secret { namespace, name } => {
            from_secret(client, namespace, name, root_lifetime).await
        }
    }
}

fn from_files(dir: &Path) -> Result<Authority, AuthorityError> {
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
    let chain = optional(CERT_CHAIN);
    let root = optional(ROOT_CERT);
    let ca = CertificateAuthority::load(
        &dir.join(CA_CERT),
        &dir.join(CA_KEY),
        chain.as_deref(),
        root.as_deref(),
    )
    .map_err(|source| AuthorityError::Files {
        dir: dir.to_owned(),
        source,
    })?;
    Ok(Authority {
        ca,
        origin: format!("files in {}", dir.display()),
    })
}

async fn from_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    root_lifetime: Duration,
) -> Result<Authority, AuthorityError> {
    let fail = |reason: String| AuthorityError::Secret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut created = false;
    let secret = match api.get_opt(name).await.map_err(|e| fail(e.to_string()))? {
        Some(secret) => secret,
        None => {
            let (cert, key) = generate_root("weft mesh root CA", root_lifetime)
                .map_err(AuthorityError::Generate)?;
            let data = BTreeMap::from([
                (CA_CERT.to_owned(), ByteString(cert.clone().into_bytes())),
                (CA_KEY.to_owned(), ByteString(key.into_bytes())),
                (ROOT_CERT.to_owned(), ByteString(cert.into_bytes())),
            ]);
            let secret = Secret {
                metadata: meta(namespace, name),
                type_: Some("Opaque".to_owned()),
                data: Some(data),
                ..Secret::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(secret) => {
                    created = true;
                    secret
                }
                // Another replica created it between our get and create: use theirs.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    api.get(name).await.map_err(|e| fail(e.to_string()))?
                }
                Err(e) => return Err(fail(format!("creating it: {e}"))),
            }
        }
    };
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, AuthorityError> {
        data.get(key)
            .map(|b| {
                String::from_utf8(b.0.clone()).map_err(|_| fail(format!("{key} is not PEM text")))
            })
            .transpose()
    };
    let cert = text(CA_CERT)?.ok_or_else(|| fail(format!("has no {CA_CERT}")))?;
    let key = text(CA_KEY)?.ok_or_else(|| fail(format!("has no {CA_KEY}")))?;
    let chain = text(CERT_CHAIN)?;
    let root = text(ROOT_CERT)?;
    let ca = CertificateAuthority::from_pem(&cert, &key, chain.as_deref(), root.as_deref())
        .map_err(|e| fail(e.to_string()))?;
    if created {
        info!(secret = %format!("{namespace}/{name}"), "created a new self-signed mesh root CA");
    }
    Ok(Authority {
        ca,
        origin: format!(
            "Secret {namespace}/{}{}",
            secret.metadata.name.as_deref().unwrap_or(name),
            if created { " (created)" } else { "" }
        ),
    })
}

/// Writes the CA's trust bundle to ConfigMap `namespace/name` under `root-cert.pem`,
/// creating or updating it; weftd reads it to trust the mesh and this controller.
pub async fn publish_root(
    client: &Client,
    namespace: &str,
    name: &str,
    ca: &CertificateAuthority,
) -> Result<(), AuthorityError> {
    let fail = |source| AuthorityError::Publish {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let bundle = certificates_pem(ca.trust_bundle());
    let data = BTreeMap::from([(ROOT_CERT.to_owned(), bundle)]);
    match api.get_opt(name).await.map_err(fail)? {
        Some(existing) if existing.data.as_ref() == Some(&data) => Ok(()),
        Some(mut existing) => {
            existing.data = Some(data);
            api.replace(&existing.name_any(), &PostParams::default(), &existing)
                .await
                .map_err(fail)?;
            Ok(())
        }
        None => {
            let map = ConfigMap {
                metadata: meta(namespace, name),
                data: Some(data),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &map).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(fail(e)),
            }
        }
    }
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".to_owned(),
            "weft".to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}
