//! The standalone mesh file: its schema, validation into the mesh state, and reloading on edit;
//! with a manifests directory, the mesh file keeps the settings and the directory's Kubernetes
//! objects (through [`crate::discovery`]) supply workloads, services and policies; in
//! Kubernetes mode the API server's objects do.

mod incremental;
pub mod load;
pub mod meshfile;
mod objects;
pub mod synthetic;
pub mod watch;

pub use load::{ConfigError, FieldError, LoadedMesh, MeshLoader, load_file, load_str};
pub use meshfile::{CaFile, CaptureKind, EbpfFile, HboneFile, ListenFile, MeshFile, NodeFile};
pub use objects::{Settings, field_error, load_manifests};
pub use watch::MeshWatcher;

#[cfg(test)]
mod tests;
