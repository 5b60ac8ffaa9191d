//! The standalone manifests source: a directory of the YAML a user would `kubectl apply`
//! (Namespace, Pod with `spec.nodeName` and `status.podIPs`, Service, EndpointSlice,
//! ServiceAccount, weft's AuthorizationPolicy). Files are read in name order, every document
//! of every file; a document that does not parse is reported with its file, document number
//! and field path, and the whole directory is refused (the caller keeps the last good state).
//! Kinds weft does not read (Deployments, ConfigMaps, ...) are skipped and counted, so the
//! same directory can hold a whole application.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::objects::{Object, ObjectSet};
use crate::config::FieldError;

/// What one read of the directory found.
#[derive(Debug, Default)]
pub struct ManifestSet {
    pub objects: ObjectSet,
    /// Documents of kinds weft does not read, as `apiVersion/kind` with a count.
    pub skipped: std::collections::BTreeMap<String, usize>,
}

/// The files of `dir` that are read: `*.yaml`, `*.yml`, `*.json`, not hidden (a ConfigMap
/// mount keeps its data in `..data` and dated hidden directories, with visible symlinks).
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let wanted = !name.starts_with('.')
            && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
            && path.is_file();
        if wanted {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every manifest in `dir`. All problems are collected, not only the first.
pub fn read_dir(dir: &Path) -> Result<ManifestSet, Vec<FieldError>> {
    let mut set = ManifestSet::default();
    let mut errors = Vec::new();
    let listed = files(dir).map_err(|e| {
        vec![FieldError {
            path: dir.display().to_string(),
            message: format!("cannot read the manifests directory: {e}"),
        }]
    })?;
    for path in listed {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(text) => read_text(&text, &name, &mut set, &mut errors),
            Err(e) => errors.push(FieldError {
                path: name,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Reads the documents of one file's text into `set`; `file` names it in origins and errors.
pub fn read_text(text: &str, file: &str, set: &mut ManifestSet, errors: &mut Vec<FieldError>) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = format!("{file} document {}", i + 1);
        let value = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(FieldError {
                    path: at,
                    message: e.to_string(),
                });
                // The parser cannot find the next document after a syntax error.
                return;
            }
        };
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let object = match document(value) {
            Document::Object(o) => *o,
            Document::Skipped(kind) => {
                *set.skipped.entry(kind).or_default() += 1;
                continue;
            }
            Document::Invalid { path, message } => {
                errors.push(FieldError {
                    path: format!("{at}: {path}"),
                    message,
                });
                continue;
            }
        };
        let origin = format!("{at} ({})", object.describe());
        if object.metadata().name.as_deref().is_none_or(str::is_empty) {
            errors.push(FieldError {
                path: format!("{at}: metadata.name"),
                message: "is required".into(),
            });
        } else if let Err(message) = set.objects.insert(object, at) {
            errors.push(FieldError {
                path: origin,
                message,
            });
        }
    }
}

enum Document {
    Object(Box<Object>),
    /// A kind weft does not read, as `apiVersion/kind`.
    Skipped(String),
    Invalid {
        path: String,
        message: String,
    },
}

/// The kinds weft reads, by `apiVersion` and `kind`.
fn document(value: serde_yaml_ng::Value) -> Document {
    let field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version.is_empty() || kind.is_empty() {
        return Document::Invalid {
            path: if api_version.is_empty() {
                "apiVersion"
            } else {
                "kind"
            }
            .into(),
            message: "is required (a Kubernetes object needs apiVersion and kind)".into(),
        };
    }
    fn typed<T: DeserializeOwned>(
        value: serde_yaml_ng::Value,
        wrap: impl FnOnce(T) -> Object,
    ) -> Document {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(o) => Document::Object(Box::new(wrap(o))),
            Err(e) => Document::Invalid {
                path: e.path().to_string(),
                message: e.into_inner().to_string(),
            },
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => typed(value, Object::Namespace),
        ("v1", "Pod") => typed(value, |o| Object::Pod(Box::new(o))),
        ("v1", "Service") => typed(value, |o| Object::Service(Box::new(o))),
        ("v1", "ServiceAccount") => typed(value, Object::ServiceAccount),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            typed(value, |o| Object::EndpointSlice(Box::new(o)))
        }
        ("security.weft.dev/v1alpha1", "AuthorizationPolicy") => {
            typed(value, |o| Object::AuthorizationPolicy(Box::new(o)))
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            typed(value, |o| Object::HttpRoute(Box::new(o)))
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            typed(value, |o| Object::GrpcRoute(Box::new(o)))
        }
        ("networking.weft.dev/v1alpha1", "TrafficPolicy") => {
            typed(value, |o| Object::TrafficPolicy(Box::new(o)))
        }
        (v, "TrafficPolicy") if v.starts_with("networking.weft.dev/") => Document::Invalid {
            path: "apiVersion".into(),
            message: format!("{v:?} is not served; weft reads networking.weft.dev/v1alpha1"),
        },
        (v, "AuthorizationPolicy") if v.starts_with("security.weft.dev/") => Document::Invalid {
            path: "apiVersion".into(),
            message: format!("{v:?} is not served; weft reads security.weft.dev/v1alpha1"),
        },
        _ => Document::Skipped(format!("{api_version}/{kind}")),
    }
}
