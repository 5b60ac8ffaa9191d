//! weft-core: the parts that the node agent (`weftd`) and the waypoint share.
//!
//! Module names follow the data path: `identity` proves who a workload is, `hbone` carries its
//! bytes, `model` is the mesh state everything reads, `authz` decides whether a connection may
//! pass, `discovery` turns Kubernetes objects into mesh items, `config` validates them (and the
//! standalone mesh file) into that state, `telemetry` names what we count.

pub mod authz;
pub mod config;
pub mod discovery;
pub mod hbone;
pub mod identity;
pub mod listener;
pub mod model;
pub mod telemetry;
