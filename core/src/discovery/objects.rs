//! The Kubernetes objects a source currently knows, keyed as the API server keys them, each
//! with where it came from so that problems can name it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::crd::{AuthorizationPolicy, TrafficPolicyResource};
use super::gateway::{GRPCRoute, HTTPRoute};

/// `(namespace, name)`.
pub type ObjectKey = (String, String);

/// One object and its origin: `file.yaml document 2` or `api`.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub object: T,
    pub origin: String,
}

/// One object of a kind weft reads.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    ServiceAccount(ServiceAccount),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    HttpRoute(Box<HTTPRoute>),
    GrpcRoute(Box<GRPCRoute>),
    TrafficPolicy(Box<TrafficPolicyResource>),
}

/// The kinds weft reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    ServiceAccount,
    AuthorizationPolicy,
    HttpRoute,
    GrpcRoute,
    TrafficPolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TrafficPolicy => "TrafficPolicy",
        }
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TrafficPolicy(_) => Kind::TrafficPolicy,
        }
    }

    /// `(namespace, name)`; a namespace's own key is `("", name)`.
    pub fn key(&self) -> ObjectKey {
        let m = self.metadata();
        let name = m.name.clone().unwrap_or_default();
        match self {
            Object::Namespace(_) => (String::new(), name),
            _ => (namespace_of(m).to_string(), name),
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::TrafficPolicy(o) => &o.metadata,
        }
    }

    /// `Kind namespace/name` (`Kind name` for namespaces), how problems name the object.
    pub fn describe(&self) -> String {
        let m = self.metadata();
        let name = m.name.as_deref().unwrap_or("(no name)");
        match self {
            Object::Namespace(_) => format!("Namespace {name}"),
            _ => format!("{} {}/{name}", self.kind(), namespace_of(m)),
        }
    }
}

/// The namespace of a namespaced object; `default` when unset, as `kubectl apply` does.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

#[derive(Debug, Clone, Default)]
pub struct ObjectSet {
    pub namespaces: BTreeMap<String, Stored<Namespace>>,
    pub pods: BTreeMap<ObjectKey, Stored<Pod>>,
    pub services: BTreeMap<ObjectKey, Stored<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Stored<EndpointSlice>>,
    pub service_accounts: BTreeMap<ObjectKey, Stored<ServiceAccount>>,
    pub policies: BTreeMap<ObjectKey, Stored<AuthorizationPolicy>>,
    pub http_routes: BTreeMap<ObjectKey, Stored<HTTPRoute>>,
    pub grpc_routes: BTreeMap<ObjectKey, Stored<GRPCRoute>>,
    pub traffic_policies: BTreeMap<ObjectKey, Stored<TrafficPolicyResource>>,
}

impl ObjectSet {
    /// Adds or replaces `object` (an API server's add or modify).
    pub fn upsert(&mut self, object: Object, origin: String) {
        let (ns, name) = object.key();
        let key = (ns, name.clone());
        match object {
            Object::Namespace(o) => {
                drop(self.namespaces.insert(name, Stored { object: o, origin }))
            }
            Object::Pod(o) => drop(self.pods.insert(key, Stored { object: *o, origin })),
            Object::Service(o) => drop(self.services.insert(key, Stored { object: *o, origin })),
            Object::EndpointSlice(o) => drop(
                self.endpoint_slices
                    .insert(key, Stored { object: *o, origin }),
            ),
            Object::ServiceAccount(o) => drop(
                self.service_accounts
                    .insert(key, Stored { object: o, origin }),
            ),
            Object::AuthorizationPolicy(o) => {
                drop(self.policies.insert(key, Stored { object: *o, origin }))
            }
            Object::HttpRoute(o) => {
                drop(self.http_routes.insert(key, Stored { object: *o, origin }))
            }
            Object::GrpcRoute(o) => {
                drop(self.grpc_routes.insert(key, Stored { object: *o, origin }))
            }
            Object::TrafficPolicy(o) => drop(
                self.traffic_policies
                    .insert(key, Stored { object: *o, origin }),
            ),
        }
    }

    /// Removes the object of `kind` at `key` (see [`Object::key`]); whether it was there.
    pub fn remove(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Namespace => self.namespaces.remove(&key.1).is_some(),
            Kind::Pod => self.pods.remove(key).is_some(),
            Kind::Service => self.services.remove(key).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).is_some(),
            Kind::ServiceAccount => self.service_accounts.remove(key).is_some(),
            Kind::AuthorizationPolicy => self.policies.remove(key).is_some(),
            Kind::HttpRoute => self.http_routes.remove(key).is_some(),
            Kind::GrpcRoute => self.grpc_routes.remove(key).is_some(),
            Kind::TrafficPolicy => self.traffic_policies.remove(key).is_some(),
        }
    }

    /// Forgets every object of `kind` (before a fresh list replaces them).
    pub fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Pod => self.pods.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.endpoint_slices.clear(),
            Kind::ServiceAccount => self.service_accounts.clear(),
            Kind::AuthorizationPolicy => self.policies.clear(),
            Kind::HttpRoute => self.http_routes.clear(),
            Kind::GrpcRoute => self.grpc_routes.clear(),
            Kind::TrafficPolicy => self.traffic_policies.clear(),
        }
    }

    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Namespace => self.namespaces.len(),
            Kind::Pod => self.pods.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.endpoint_slices.len(),
            Kind::ServiceAccount => self.service_accounts.len(),
            Kind::AuthorizationPolicy => self.policies.len(),
            Kind::HttpRoute => self.http_routes.len(),
            Kind::GrpcRoute => self.grpc_routes.len(),
            Kind::TrafficPolicy => self.traffic_policies.len(),
        }
    }

    /// Adds `object` unless one of its kind and key is already there; the error names where
    /// the first one came from (two files defining one object).
    pub fn insert(&mut self, object: Object, origin: String) -> Result<(), String> {
        fn put<K: Ord, T>(
            map: &mut BTreeMap<K, Stored<T>>,
            key: K,
            object: T,
            origin: String,
        ) -> Result<(), String> {
            if let Some(first) = map.get(&key) {
                return Err(format!("defined twice: first in {}", first.origin));
            }
            map.insert(key, Stored { object, origin });
            Ok(())
        }
        let m = object.metadata();
        let name = m.name.clone().unwrap_or_default();
        let key = (namespace_of(m).to_string(), name.clone());
        match object {
            Object::Namespace(o) => put(&mut self.namespaces, name, o, origin),
            Object::Pod(o) => put(&mut self.pods, key, *o, origin),
            Object::Service(o) => put(&mut self.services, key, *o, origin),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, key, *o, origin),
            Object::ServiceAccount(o) => put(&mut self.service_accounts, key, o, origin),
            Object::AuthorizationPolicy(o) => put(&mut self.policies, key, *o, origin),
            Object::HttpRoute(o) => put(&mut self.http_routes, key, *o, origin),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, key, *o, origin),
            Object::TrafficPolicy(o) => put(&mut self.traffic_policies, key, *o, origin),
        }
    }
}
