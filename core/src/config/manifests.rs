//! Settings from the mesh file, mesh items from a directory of Kubernetes manifests: read,
//! translated (the same translation the API source uses) and validated as one version. Any
//! problem refuses the whole version, as a bad mesh-file edit does.

use std::path::Path;

use super::load::{ConfigError, FieldError, LoadedMesh, finish, parse_whole, read};
use crate::discovery::{manifests, translate};

pub fn load(mesh_path: &Path, dir: &Path) -> Result<LoadedMesh, ConfigError> {
    let file = mesh_path.display().to_string();
    let mut mesh = parse_whole(&read(mesh_path)?, &file)?;
    let mut errors = Vec::new();
    for (field, listed) in [
        ("workloads", !mesh.workloads.is_empty()),
        ("services", !mesh.services.is_empty()),
        ("policies", !mesh.policies.is_empty()),
    ] {
        if listed {
            errors.push(FieldError {
                path: field.into(),
                message: format!(
                    "comes from the manifests in {}; remove it from the mesh file",
                    dir.display()
                ),
            });
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Invalid { file, errors });
    }
    let refused = |errors| ConfigError::Manifests {
        dir: dir.display().to_string(),
        errors,
    };
    let set = manifests::read_dir(dir).map_err(refused)?;
    let t = translate(&set.objects);
    if !t.problems.is_empty() {
        return Err(refused(
            t.problems
                .iter()
                .map(|p| FieldError {
                    path: format!("{}: {}", p.object, p.path),
                    message: p.message.clone(),
                })
                .collect(),
        ));
    }
    if !set.skipped.is_empty() {
        tracing::debug!(skipped = ?set.skipped, "manifests of kinds weft does not read");
    }
    mesh.workloads = t.workloads;
    mesh.services = t.services;
    mesh.policies = t.policies;
    finish(mesh, &file, mesh_path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
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
                        ],
                    ),
                    message: e.message,
                })
                .collect(),
        ),
        other => other,
    })
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
