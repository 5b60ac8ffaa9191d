//! The objects a waypoint Gateway is turned into: its ServiceAccount, Service and Deployment,
//! built whole from the Gateway so that `super::ensure` can compare and patch them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext, Service,
    ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_core::discovery::{MODE_LABEL, MODE_NONE};

use super::{
    APP, GATEWAY_NAME_LABEL, HBONE_PORT, MANAGED_BY_LABEL, MANAGER, MESH_ANNOTATION, MESH_KEY,
    NAME_LABEL, STATUS_PORT, Sizing, Waypoints,
};

/// The labels the pods are selected by. The selector of a Deployment cannot change: never
/// add to these.
fn selector(gateway: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP.to_owned()),
        (GATEWAY_NAME_LABEL.to_owned(), gateway.to_owned()),
    ])
}

fn meta(gateway: &str, namespace: &str, owner: &OwnerReference) -> ObjectMeta {
    let mut labels = selector(gateway);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    ObjectMeta {
        name: Some(gateway.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

pub fn service_account(gateway: &str, namespace: &str, owner: &OwnerReference) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(gateway, namespace, owner),
        ..Default::default()
    }
}

pub fn service(gateway: &str, namespace: &str, owner: &OwnerReference) -> Service {
    let port = |name: &str, n: i32| ServicePort {
        name: Some(name.to_owned()),
        port: n,
        target_port: Some(IntOrString::Int(n)),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    };
    Service {
        metadata: meta(gateway, namespace, owner),
        spec: Some(ServiceSpec {
            selector: Some(selector(gateway)),
            ports: Some(vec![port("hbone", HBONE_PORT), port("status", STATUS_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn deployment(
    gateway: &str,
    namespace: &str,
    owner: &OwnerReference,
    sizing: Sizing,
    waypoints: &Waypoints,
    mesh: &str,
) -> Deployment {
    let mut pod_labels = selector(gateway);
    pod_labels.insert(MODE_LABEL.to_owned(), MODE_NONE.to_owned());
    let annotations = BTreeMap::from([
        (MESH_ANNOTATION.to_owned(), mesh.to_owned()),
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), STATUS_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    let env = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let field = |path: &str| ObjectFieldSelector {
        field_path: path.to_owned(),
        ..Default::default()
    };
    let port = |name: &str, n: i32| ContainerPort {
        name: Some(name.to_owned()),
        container_port: n,
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    };
    let container = Container {
        name: APP.to_owned(),
        image: Some(waypoints.image.clone()),
        args: Some(
            [
                "--kubernetes",
                "--name",
                gateway,
                "--mesh",
                "/etc/weft/mesh.yaml",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        env: Some(
            [
                EnvVar {
                    name: "POD_NAMESPACE".to_owned(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(field("metadata.namespace")),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                env("WEFT_WORKERS", sizing.workers.to_string()),
                env("WEFT_CA_ADDRESS", waypoints.ca_address.clone()),
                env(
                    "WEFT_CONTROLLER_NAMESPACE",
                    waypoints.controller_namespace.clone(),
                ),
                env("WEFT_CA_IDENTITY", waypoints.controller_identity.clone()),
                env(
                    "WEFT_CERT_LIFETIME",
                    humantime::format_duration(waypoints.cert_lifetime).to_string(),
                ),
            ]
            .into_iter()
            .chain(waypoints.tracing.iter().flat_map(|t| {
                [
                    env("WEFT_OTLP_ENDPOINT", t.otlp_endpoint.clone()),
                    env("WEFT_TRACE_SAMPLING", t.sampling.to_string()),
                ]
            }))
            .collect(),
        ),
        ports: Some(vec![port("hbone", HBONE_PORT), port("status", STATUS_PORT)]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".to_owned()),
                port: IntOrString::Int(STATUS_PORT),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("64Mi".to_owned())),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("mesh", "/etc/weft"),
            mount("ca-token", "/var/run/secrets/tokens/weft-ca"),
        ]),
        ..Default::default()
    };
    let volumes = vec![
        Volume {
            name: "mesh".to_owned(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: MESH_KEY.to_owned(),
                    field_ref: Some(field(&format!("metadata.annotations['{MESH_ANNOTATION}']"))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        // The waypoint's identity towards weft-controller, as weftd's: a token bound to the
        // pod, for the controller's audience only, rotated by the kubelet.
        Volume {
            name: "ca-token".to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_owned(),
                        audience: Some(waypoints.audience.clone()),
                        expiration_seconds: Some(3600),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    Deployment {
        metadata: meta(gateway, namespace, owner),
        spec: Some(DeploymentSpec {
            replicas: Some(sizing.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(gateway)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(gateway.to_owned()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
