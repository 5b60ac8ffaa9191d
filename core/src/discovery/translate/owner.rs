//! The workload a pod is an instance of, as metrics name it (Istio's `source_workload` /
//! `destination_workload`): the Deployment, CronJob or other controller, not the pod. Pod
//! names change with every rollout; a label per pod name would grow every scrape's series
//! without bound and split one Deployment's traffic across dashboards.
//!
//! The pod alone tells it, as Istio derives it: the controlling owner reference, with a
//! ReplicaSet made by a Deployment (`<deployment>-<pod-template-hash>`) and a Job made by a
//! CronJob (`<cronjob>-<8 to 10 digit schedule time>`) traced one step further; the label
//! `weft.dev/workload-name` overrides, and a pod nobody controls is its own workload.

use k8s_openapi::api::core::v1::Pod;

/// Overrides the derived name (Istio's `service.istio.io/workload-name`).
pub const WORKLOAD_NAME_LABEL: &str = "weft.dev/workload-name";

pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let label = |k: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
    };
    if let Some(name) = label(WORKLOAD_NAME_LABEL) {
        return name.clone();
    }
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && !o.name.is_empty());
    let Some(owner) = controller else {
        return meta.name.clone().unwrap_or_default();
    };
    let name = match owner.kind.as_str() {
        "ReplicaSet" => label("pod-template-hash")
            .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty()),
        "Job" => cron_job(&owner.name),
        _ => None,
    };
    name.unwrap_or(&owner.name).to_owned()
}

/// `nightly-29012345` -> `nightly`: a CronJob names its Jobs after the scheduled minute.
fn cron_job(job: &str) -> Option<&str> {
    let (name, stamp) = job.rsplit_once('-')?;
    let digits = (8..=10).contains(&stamp.len()) && stamp.bytes().all(|b| b.is_ascii_digit());
    (digits && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, owner: Option<(&str, &str)>, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                owner_references: owner.map(|(kind, name)| {
                    vec![OwnerReference {
                        kind: kind.to_owned(),
                        name: name.to_owned(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_is_named_by_what_runs_it() {
        let hash = [("pod-template-hash", "5d8f7c9b6")];
        let cases = [
            (
                pod(
                    "reviews-v1-5d8f7c9b6-x2x4q",
                    Some(("ReplicaSet", "reviews-v1-5d8f7c9b6")),
                    &hash,
                ),
                "reviews-v1",
            ),
            // A ReplicaSet of its own (no Deployment's hash in its name) is the workload.
            (
                pod("cache-abcde", Some(("ReplicaSet", "cache")), &[]),
                "cache",
            ),
            (pod("db-0", Some(("StatefulSet", "db")), &[]), "db"),
            (
                pod("agent-7hx2k", Some(("DaemonSet", "agent")), &[]),
                "agent",
            ),
            (
                pod(
                    "nightly-29012345-abcde",
                    Some(("Job", "nightly-29012345")),
                    &[],
                ),
                "nightly",
            ),
            (
                pod("migrate-x7k2p", Some(("Job", "migrate")), &[]),
                "migrate",
            ),
            (pod("debug", None, &[]), "debug"),
            (
                pod(
                    "reviews-v1-5d8f7c9b6-x2x4q",
                    Some(("ReplicaSet", "reviews-v1-5d8f7c9b6")),
                    &[
                        ("pod-template-hash", "5d8f7c9b6"),
                        (WORKLOAD_NAME_LABEL, "reviews"),
                    ],
                ),
                "reviews",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(workload_name(&p), want, "{:?}", p.metadata.name);
        }
    }
}
