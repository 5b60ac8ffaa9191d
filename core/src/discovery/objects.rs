//! The Kubernetes objects a source currently knows, keyed as the API server keys them, each
//! with where it came from so that problems can name it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::crd::AuthorizationPolicy;

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
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
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
}

impl ObjectSet {
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
        }
    }
}
