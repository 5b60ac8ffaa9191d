//! Gateway API objects weft reads: `HTTPRoute` and `GRPCRoute` (`gateway.networking.k8s.io/v1`).
//! Their CRDs belong to the Gateway API project, not to weft, so these types only parse; the
//! spec types are the model's (`model::route`).

use std::borrow::Cow;
use std::marker::PhantomData;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, Resource};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::route::grpc::GrpcRouteRule;
use crate::model::route::{ParentRef, RouteRule};

#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    schema = "disabled",
    status = "RouteStatus"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Set by `Listed::decode` when the API server's spec did not parse: (field path,
    /// message). The route is then not applied and its status says why.
    #[serde(skip)]
    pub unreadable: Option<(String, String)>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    namespaced,
    schema = "disabled",
    status = "RouteStatus"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Set by `Listed::decode` when the API server's spec did not parse: (field path,
    /// message). The route is then not applied and its status says why.
    #[serde(skip)]
    pub unreadable: Option<(String, String)>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// Gateway API `RouteStatus`, kept as written: weft-controller is its writer; the sources only
/// carry it through.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<serde_json::Value>,
}

/// A route as the API server lists it, its spec decoded per object. Gateway API's CRDs carry
/// fields weft does not implement (`sessionPersistence`, CORS filters, ...), and weft's spec
/// types refuse unknown fields; decoded as one list, one such route would fail the whole list
/// and leave every route of the cluster unwatched. Decoded here, it becomes a route with
/// `unreadable` set, left out with a problem naming the field, while the others apply.
#[derive(Debug, Clone, Deserialize)]
pub struct Listed<K> {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default)]
    pub status: Option<RouteStatus>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

impl<K: Resource<DynamicType = ()>> Resource for Listed<K> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Owned(K::kind(&()).into_owned())
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Owned(K::group(&()).into_owned())
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Owned(K::version(&()).into_owned())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Owned(K::plural(&()).into_owned())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The spec, or the default spec and (field path, message) of what did not parse.
fn spec<S: DeserializeOwned + Default>(value: serde_json::Value) -> (S, Option<(String, String)>) {
    match serde_path_to_error::deserialize::<_, S>(value) {
        Ok(s) => (s, None),
        Err(e) => {
            let path = match e.path().to_string() {
                p if p == "." => "spec".to_owned(),
                p => format!("spec.{p}"),
            };
            (S::default(), Some((path, e.into_inner().to_string())))
        }
    }
}

impl Listed<HTTPRoute> {
    pub fn decode(self) -> HTTPRoute {
        let (mut s, unreadable) = spec::<HttpRouteSpec>(self.spec);
        s.unreadable = unreadable;
        HTTPRoute {
            metadata: self.metadata,
            spec: s,
            status: self.status,
        }
    }
}

impl Listed<GRPCRoute> {
    pub fn decode(self) -> GRPCRoute {
        let (mut s, unreadable) = spec::<GrpcRouteSpec>(self.spec);
        s.unreadable = unreadable;
        GRPCRoute {
            metadata: self.metadata,
            spec: s,
            status: self.status,
        }
    }
}
