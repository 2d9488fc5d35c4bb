//! berth-proto: the protobuf messages and gRPC services of berth.
//!
//! - [`records`]: the persisted model (rocksdb rows and Raft log entries).
//! - [`cluster`]: the API the `berth` CLI speaks to any server.
//! - [`agent`]: the session between an agent and the leader.
//! - [`raft`]: server-to-server Raft traffic.
//!
//! The wire types of `cluster` and `agent` stay at the edges of the server
//! and the agent: their api/ and session code convert them (DESIGN.md,
//! invariant 10).

/// The persisted model: every record kind carries a schema version.
#[allow(clippy::large_enum_variant)]
pub mod records {
    tonic::include_proto!("berth.records");

    /// The schema version written into every record this build persists.
    pub const SCHEMA_VERSION: u32 = 1;
}

/// The CLI-facing cluster API.
#[allow(clippy::large_enum_variant)]
pub mod cluster {
    tonic::include_proto!("berth.cluster");
}

/// The agent session protocol.
#[allow(clippy::large_enum_variant)]
pub mod agent {
    tonic::include_proto!("berth.agent");
}

/// Server-to-server Raft transport.
pub mod raft {
    tonic::include_proto!("berth.raft");
}

/// The port a berth-server listens on when none is given.
pub const DEFAULT_PORT: u16 = 7420;
