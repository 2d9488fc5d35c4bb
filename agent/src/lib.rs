//! berth-agent: the node side of a berth cluster. Data flows
//! image (content store) -> snapshot (layer dirs, overlay) -> bundle
//! (config.json) -> runtime (shim, namespaces); the supervisor drives it
//! from the cluster's assignments and the session carries both ways.

pub mod build;
pub mod credentials;
pub mod engine;
pub mod image;
pub mod logs;
pub mod orders;
pub mod runtime;
pub mod session;
pub mod simulate;
pub mod snapshot;
pub mod supervisor;
