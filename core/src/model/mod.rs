//! The mesh model: workloads, services, authorization policies, and the indexed state built from
//! them that the proxies read on every connection.

pub mod policy;
pub mod route;
pub mod service;
pub mod state;
pub mod traffic;
pub mod workload;

pub use service::{Service, ServicePort};
pub use state::{Destination, MeshState, StateStore};
pub use workload::{CaptureMode, InboundMode, TunnelProtocol, Workload};
