//! Istio's certificate service (`istio.v1.auth.IstioCertificateService`), generated from the
//! vendored `proto/istio/security/v1alpha1/ca.proto`: the client weftd and the waypoint use,
//! and the server trait weft-controller implements.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("istio.v1.auth");

/// The request metadata key that names the identity a node agent asks for on a workload's
/// behalf (Istio's ztunnel sets the same key).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
