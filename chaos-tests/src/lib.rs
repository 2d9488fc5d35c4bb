//! berth-chaos: a harness that starts real `berth-server` and `berth-agent`
//! processes, drives them with the real `berth` CLI, and injects faults
//! (kill -9 and restarts, partitions). The scenarios live under tests/.
//! [`vm`] boots a throwaway qemu guest for what this host cannot show (a
//! kernel with only the cgroup v2 hierarchy).
//!
//! Every scenario runs in [`sandbox`]: fresh pid, mount and network
//! namespaces of its own, so that a failing test leaves no process, mount
//! or port behind and tests can run side by side.

pub mod cluster;
pub mod dockerd;
pub mod dockerfiles;
pub mod images;
pub mod net;
pub mod processes;
pub mod sandbox;
pub mod vm;

pub use cluster::{Cluster, CommandResult};
