//! The standalone mesh file: its schema, validation into the mesh state, and reloading on edit.

mod incremental;
pub mod load;
pub mod meshfile;
pub mod synthetic;
pub mod watch;

pub use load::{ConfigError, FieldError, LoadedMesh, MeshLoader, load_file, load_str};
pub use meshfile::{CaFile, CaptureKind, EbpfFile, HboneFile, ListenFile, MeshFile, NodeFile};
pub use watch::MeshWatcher;

#[cfg(test)]
mod tests;
