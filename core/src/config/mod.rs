//! The standalone mesh file: its schema, validation into the mesh state, and reloading on edit;
//! with a manifests directory, the mesh file keeps the settings and the directory's Kubernetes
//! objects (through [`crate::discovery`]) supply workloads, services and policies.

mod incremental;
pub mod load;
mod manifests;
pub mod meshfile;
pub mod synthetic;
pub mod watch;

pub use load::{ConfigError, FieldError, LoadedMesh, MeshLoader, load_file, load_str};
pub use meshfile::{CaFile, CaptureKind, EbpfFile, HboneFile, ListenFile, MeshFile, NodeFile};
pub use watch::MeshWatcher;

#[cfg(test)]
mod tests;
