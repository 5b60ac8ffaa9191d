//! What the source keeps of each object: the fields the translation reads. A node watches
//! every pod in the cluster (for destination identities), so a pod's volumes, env, probes,
//! managed fields and the like would be most of weftd's memory for nothing.
//!
//! Annotations are dropped too, and with them `weft.dev/netns`: on a real node a pod's network
//! namespace comes from its cgroup, never from a path the pod's author wrote.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Metadata without managed fields, owner references or annotations (a pod keeps its
/// controller's kind and name).
pub fn meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.owner_references = None;
    m.annotations = None;
    m.finalizers = None;
}

pub fn pod(p: &mut Pod) {
    // The controlling owner names the pod's workload in metrics; its kind and name are all
    // the translation reads of it.
    let controller = p
        .metadata
        .owner_references
        .take()
        .into_iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| OwnerReference {
            kind: o.kind,
            name: o.name,
            controller: Some(true),
            ..OwnerReference::default()
        });
    meta(&mut p.metadata);
    p.metadata.owner_references = controller.map(|o| vec![o]);
    if let Some(spec) = p.spec.take() {
        p.spec = Some(PodSpec {
            node_name: spec.node_name,
            host_network: spec.host_network,
            service_account_name: spec.service_account_name,
            // Named target ports resolve against container ports.
            containers: spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        });
    }
    if let Some(status) = p.status.take() {
        p.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            ..PodStatus::default()
        });
    }
}
