//! berth-server: the control plane of a berth cluster.
//!
//! A write is API -> Raft commit -> state machine (see [`raft`] and
//! [`state`]); only the leader schedules ([`scheduler`]) and talks to agents
//! ([`nodes`]); [`api`] is the CLI-facing edge.

// tonic::Status and openraft's StorageError are large, and the traits we
// implement fix them as our error types; boxing them would only move the
// cost around.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod app;
pub mod auth;
pub mod background;
pub mod files;
pub mod member_id;
pub mod nodes;
pub mod pki;
pub mod raft;
pub mod scheduler;
pub mod stall;
pub mod state;
pub mod tls;

pub use app::{App, AppConfig, AppError};
