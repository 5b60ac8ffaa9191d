//! Where this node's workload certificates come from: the mesh file's CA in standalone mode,
//! or weft-controller in Kubernetes mode.
//!
//! In Kubernetes mode the node makes each key itself and sends only a CSR, authenticated by
//! its projected service-account token. It trusts the root the controller publishes in a
//! ConfigMap, read through the API server (whose own TLS and RBAC vouch for it), and it
//! waits for that ConfigMap on first install, when the controller may not have written it yet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use rustls::pki_types::CertificateDer;

use super::ca::{CaError, CertificateAuthority};
use super::manager::{CertificateProvider, LocalCa};
use super::remote::{RemoteCa, RemoteCaConfig, RemoteCaError};
use super::spiffe::{SpiffeError, SpiffeId};
use super::verify::{TrustAnchors, VerifyError};
use crate::config::{CaFile, LoadedMesh};

/// Why there is no certificate source.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error(
        "{mesh}: the mesh file has no `ca` section; weftd needs a CA to issue workload certificates (make one with `weftd ca init --dir DIR`)"
    )]
    NoCa { mesh: String },
    #[error(
        "{mesh}: the `ca` section is for standalone mode; with --kubernetes, certificates come from weft-controller ({address}). Remove the section"
    )]
    CaInKubernetesMode { mesh: String, address: String },
    #[error("loading the CA named in the mesh file: {0}")]
    Ca(#[from] CaError),
    #[error("the controller's identity {given:?}: {source}")]
    ControllerIdentity { given: String, source: SpiffeError },
    #[error("{source_name}: {source}")]
    Roots {
        source_name: String,
        source: VerifyError,
    },
    #[error(transparent)]
    Remote(#[from] RemoteCaError),
}

/// How a binary reaches weft-controller in Kubernetes mode. With the `cli` feature these are
/// the command-line flags too, so weftd and the waypoint spell them (and their environment
/// variables) the same.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(next_help_heading = "Kubernetes mode: certificates from weft-controller")
)]
pub struct ControllerOptions {
    /// The certificate service.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "ca_address",
            long = "ca-address",
            env = "WEFT_CA_ADDRESS",
            default_value = "https://weft-controller.weft.svc:15012"
        )
    )]
    pub address: String,
    /// weft-controller's namespace: its root ConfigMap is read from there.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "controller_namespace",
            long = "controller-namespace",
            env = "WEFT_CONTROLLER_NAMESPACE",
            default_value = "weft"
        )
    )]
    pub namespace: String,
    /// The SPIFFE id the controller must prove (default: its service account
    /// `weft-controller` in --controller-namespace).
    #[cfg_attr(
        feature = "cli",
        arg(id = "ca_identity", long = "ca-identity", env = "WEFT_CA_IDENTITY")
    )]
    pub identity: Option<String>,
    /// The projected service-account token to authenticate with (audience `weft-ca`).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "ca_token",
            long = "ca-token",
            env = "WEFT_CA_TOKEN",
            default_value = "/var/run/secrets/tokens/weft-ca/token"
        )
    )]
    pub token: PathBuf,
    /// The ConfigMap the controller publishes the mesh root in.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "root_configmap",
            long,
            env = "WEFT_ROOT_CONFIGMAP",
            default_value = "weft-ca-root"
        )
    )]
    pub root_configmap: String,
    /// Requested workload certificate lifetime; renewed at half life.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "cert_lifetime",
            long = "cert-lifetime",
            env = "WEFT_CERT_LIFETIME",
            default_value = "24h",
            value_parser = crate::config::meshfile::parse_duration
        )
    )]
    pub lifetime: Duration,
    /// Ask on workloads' behalf (a node agent) or for the caller's own identity (a waypoint);
    /// set by the binary, not a flag.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub impersonate: bool,
}

const ROOT_KEY: &str = "root-cert.pem";

/// The certificate source and the anchors peers are verified against.
pub struct Issuer {
    pub provider: Arc<dyn CertificateProvider>,
    pub roots: Vec<CertificateDer<'static>>,
    /// The mesh file's CA section this was built from (standalone mode), to notice edits.
    pub local_ca: Option<CaFile>,
    /// For the log: where certificates come from.
    pub origin: String,
}

pub async fn issuer(
    loaded: &LoadedMesh,
    mesh_path: &std::path::Path,
    controller: Option<(&ControllerOptions, &kube::Client)>,
) -> Result<Issuer, IssuerError> {
    let Some((options, client)) = controller else {
        return local(loaded, mesh_path);
    };
    if loaded.ca.is_some() {
        return Err(IssuerError::CaInKubernetesMode {
            mesh: mesh_path.display().to_string(),
            address: options.address.clone(),
        });
    }
    let trust_domain = &loaded.state.trust_domain;
    let identity: SpiffeId = match &options.identity {
        Some(id) => id
            .parse()
            .map_err(|source| IssuerError::ControllerIdentity {
                given: id.clone(),
                source,
            })?,
        None => SpiffeId::new(trust_domain, &options.namespace, "weft-controller").map_err(
            |source| IssuerError::ControllerIdentity {
                given: format!("{trust_domain}/ns/{}/sa/weft-controller", options.namespace),
                source,
            },
        )?,
    };
    let pem = root_from_configmap(client, &options.namespace, &options.root_configmap).await;
    let source = format!(
        "ConfigMap {}/{} key {ROOT_KEY}",
        options.namespace, options.root_configmap
    );
    let anchors = TrustAnchors::from_pem(&pem, &source).map_err(|e| IssuerError::Roots {
        source_name: source.clone(),
        source: e,
    })?;
    let roots = anchors.certificates().to_vec();
    let provider = RemoteCa::new(RemoteCaConfig {
        address: options.address.clone(),
        server_identity: identity.clone(),
        anchors,
        token_path: Some(options.token.clone()),
        lifetime: options.lifetime,
        impersonate: options.impersonate,
    })?;
    Ok(Issuer {
        provider: Arc::new(provider),
        roots,
        local_ca: None,
        origin: format!(
            "weft-controller at {} ({identity}), roots from {source}",
            options.address
        ),
    })
}

fn local(loaded: &LoadedMesh, mesh_path: &std::path::Path) -> Result<Issuer, IssuerError> {
    let Some(ca_files) = loaded.ca.clone() else {
        return Err(IssuerError::NoCa {
            mesh: mesh_path.display().to_string(),
        });
    };
    let ca = CertificateAuthority::load(
        &ca_files.cert_file,
        &ca_files.key_file,
        ca_files.chain_file.as_deref(),
        ca_files.bundle_file.as_deref(),
    )?;
    let roots = ca.trust_bundle().to_vec();
    Ok(Issuer {
        provider: Arc::new(LocalCa::new(Arc::new(ca), ca_files.leaf_lifetime)),
        roots,
        origin: format!("the mesh file's CA ({})", ca_files.cert_file.display()),
        local_ca: Some(ca_files),
    })
}

/// The root PEM, waiting (and saying why every 10 s) until the ConfigMap exists and has it.
async fn root_from_configmap(client: &kube::Client, namespace: &str, name: &str) -> String {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut last_said = None::<Instant>;
    loop {
        let why = match api.get_opt(name).await {
            Ok(Some(map)) => match map.data.and_then(|mut d| d.remove(ROOT_KEY)) {
                Some(pem) => return pem,
                None => format!("it has no {ROOT_KEY}"),
            },
            Ok(None) => "it does not exist yet (weft-controller creates it)".to_owned(),
            Err(e) => e.to_string(),
        };
        if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(
                waited_s = started.elapsed().as_secs(),
                "waiting for the mesh root in ConfigMap {namespace}/{name}: {why}"
            );
            last_said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
