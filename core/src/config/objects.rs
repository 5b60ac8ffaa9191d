//! Settings from the mesh file, mesh items from Kubernetes objects (a directory of manifests,
//! or the API server), through the one translation both sources share.
//!
//! The two sources differ in what a problem refuses. A manifests directory is one version the
//! operator wrote, so any problem refuses all of it, as a bad mesh-file edit does. The API server
//! holds many authors' objects: one bad policy must not stop every other update, so its problems
//! are reported and the translation's fail-closed result for that object is applied.

use std::path::{Path, PathBuf};

use super::load::{ConfigError, FieldError, LoadedMesh, finish, parse_whole, read};
use super::meshfile::MeshFile;
use crate::discovery::{ObjectSet, Problem, Translation, manifests, translate};

/// The mesh file's settings (trust domain, ports, nodes, CA), for items from elsewhere.
#[derive(Debug, Clone)]
pub struct Settings {
    mesh: MeshFile,
    file: String,
    base: PathBuf,
}

impl Settings {
    /// Reads `mesh_path`, refusing it if it lists items that `source` supplies instead.
    pub fn read(mesh_path: &Path, source: &str) -> Result<Self, ConfigError> {
        let file = mesh_path.display().to_string();
        let mesh = parse_whole(&read(mesh_path)?, &file)?;
        let errors: Vec<FieldError> = [
            ("workloads", !mesh.workloads.is_empty()),
            ("services", !mesh.services.is_empty()),
            ("policies", !mesh.policies.is_empty()),
            ("routes", !mesh.routes.is_empty()),
            ("trafficPolicies", !mesh.traffic_policies.is_empty()),
        ]
        .into_iter()
        .filter(|(_, listed)| *listed)
        .map(|(field, _)| FieldError {
            path: field.into(),
            message: format!("comes from {source}; remove it from the mesh file"),
        })
        .collect();
        if !errors.is_empty() {
            return Err(ConfigError::Invalid { file, errors });
        }
        Ok(Settings {
            mesh,
            file,
            base: mesh_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.mesh.trust_domain
    }

    /// The settings with `t`'s items, validated and indexed. A validation error is mapped to
    /// the object it came from and handed to `refused`, which says which source refused it.
    pub fn assemble(
        &self,
        t: Translation,
        refused: impl FnOnce(Vec<FieldError>) -> ConfigError,
    ) -> Result<LoadedMesh, ConfigError> {
        let mut mesh = self.mesh.clone();
        mesh.workloads = t.workloads;
        mesh.services = t.services;
        mesh.policies = t.policies;
        mesh.routes = t.routes;
        mesh.traffic_policies = t.traffic_policies;
        finish(mesh, &self.file, &self.base).map_err(|e| match e {
            // Name the objects, not positions in lists the user never wrote.
            ConfigError::Invalid { errors, .. } => refused(
                errors
                    .into_iter()
                    .map(|e| FieldError {
                        path: locate(
                            &e.path,
                            &[
                                ("workloads", &t.workload_origins),
                                ("services", &t.service_origins),
                                ("policies", &t.policy_origins),
                                ("routes", &t.route_origins),
                                ("trafficPolicies", &t.traffic_policy_origins),
                            ],
                        ),
                        message: e.message,
                    })
                    .collect(),
            ),
            other => other,
        })
    }

    /// One version of the API server's objects. Translation problems come back beside the
    /// mesh (see the module docs); only an invalid result refuses the version.
    pub fn from_cluster(
        &self,
        objects: &ObjectSet,
    ) -> Result<(LoadedMesh, Vec<Problem>), ConfigError> {
        let mut t = translate(objects);
        let problems = std::mem::take(&mut t.problems);
        let mesh = self.assemble(t, |errors| ConfigError::Cluster { errors })?;
        Ok((mesh, problems))
    }
}

/// The mesh file's settings with the items of the manifests in `dir`; any problem refuses all.
pub fn load_manifests(mesh_path: &Path, dir: &Path) -> Result<LoadedMesh, ConfigError> {
    let settings = Settings::read(mesh_path, &format!("the manifests in {}", dir.display()))?;
    let refused = |errors| ConfigError::Manifests {
        dir: dir.display().to_string(),
        errors,
    };
    let set = manifests::read_dir(dir).map_err(refused)?;
    let t = translate(&set.objects);
    if !t.problems.is_empty() {
        return Err(refused(t.problems.iter().map(field_error).collect()));
    }
    if !set.skipped.is_empty() {
        tracing::debug!(skipped = ?set.skipped, "manifests of kinds weft does not read");
    }
    settings.assemble(t, refused)
}

pub fn field_error(p: &Problem) -> FieldError {
    FieldError {
        path: format!("{}: {}", p.object, p.path),
        message: p.message.clone(),
    }
}

/// `workloads[3].ips[0]` -> `Pod web/web-1 (pods.yaml document 3): ips[0]`.
fn locate(path: &str, lists: &[(&str, &Vec<String>)]) -> String {
    for (list, origins) in lists {
        let Some(rest) = path.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let Some((index, field)) = rest.split_once(']') else {
            continue;
        };
        if let Some(origin) = index.parse::<usize>().ok().and_then(|i| origins.get(i)) {
            return format!("{origin}: {}", field.trim_start_matches('.'));
        }
    }
    path.to_string()
}
