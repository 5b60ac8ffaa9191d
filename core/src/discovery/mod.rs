//! Kubernetes objects are the input language of the mesh model. A source (a directory of
//! manifests in standalone mode, the API server in Kubernetes mode) fills an [`ObjectSet`];
//! [`translate`] turns it into the workloads, services and policies that
//! [`crate::config`] validates and indexes, the same way for both sources.

pub mod cluster;
pub mod crd;
pub mod gateway;
pub mod manifests;
pub mod objects;
pub mod source;
pub mod translate;

pub use objects::{Kind, Object, ObjectKey, ObjectSet};
pub use translate::{Problem, Translation, translate};

/// Namespace label that meshes a namespace's pods (`ambient`); on a pod, `none` opts it out.
pub const MODE_LABEL: &str = "weft.dev/mode";
pub const MODE_AMBIENT: &str = "ambient";
pub const MODE_NONE: &str = "none";
/// Namespace or Service label naming the waypoint (a Gateway) that serves its traffic; on a
/// Service, `none` opts it out of its namespace's (Istio's `istio.io/use-waypoint: none`).
pub const USE_WAYPOINT_LABEL: &str = "weft.dev/use-waypoint";
pub const WAYPOINT_NONE: &str = "none";
/// Standalone mode only: the network namespace that stands in for a pod. On a real node the
/// pod's namespace is found from its cgroup instead.
pub const NETNS_ANNOTATION: &str = "weft.dev/netns";
/// The label by which an EndpointSlice names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[cfg(test)]
mod translate_tests;
