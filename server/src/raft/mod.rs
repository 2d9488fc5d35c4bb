//! The Raft layer: openraft's type configuration, the rocksdb log store and
//! state machine, the tonic transport, and the one function that wires them.
//!
//! Desired state changes only through a commit here (DESIGN.md, invariant 1).

pub mod codec;
pub mod failover;
pub mod faults;
pub mod network;
pub mod snapshot;
pub mod store;
pub mod wal;
pub mod writeback;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use berth_proto::records;
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::state::StateReader;

/// A state-machine command carried in a Raft entry: a records.proto
/// `Command`. Openraft moves it between servers with serde; it travels as its
/// protobuf bytes so that there is exactly one encoding of a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Request(pub records::Command);

/// What applying a [`Request`] returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response(pub records::CommandResult);

openraft::declare_raft_types!(
    /// The openraft types of berth's control plane.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
);

/// The Raft handle of a berth-server.
pub type BerthRaft = openraft::Raft<TypeConfig, store::StateMachine>;
/// A Raft log id (leader's term and node, and index).
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote (term, candidate, and whether a quorum granted it).
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A Raft log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A membership configuration.
pub type Membership = openraft::Membership<u64, BasicNode>;
/// A membership and the log id it was committed at.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// What openraft knows of a snapshot.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// Openraft's metrics of this member.
pub type Metrics = openraft::RaftMetrics<TypeConfig>;

/// A copy of this member's current Raft metrics.
pub fn metrics(raft: &BerthRaft) -> Metrics {
    use openraft::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().clone()
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.op {
            Some(op) => write!(f, "{}", op_name(op)),
            None => f.write_str("empty command"),
        }
    }
}

/// A command's kind, for openraft's logs.
fn op_name(op: &records::command::Op) -> &'static str {
    use records::command::Op;
    match op {
        Op::Batch(_) => "batch",
        Op::Create(_) => "create",
        Op::Remove(_) => "remove",
        Op::Place(_) => "place",
        Op::Transition(_) => "transition",
        Op::Logs(_) => "logs",
        Op::Node(_) => "node",
        Op::NodeLabels(_) => "node labels",
        Op::NodeStatus(_) => "node status",
        Op::Desired(_) => "desired",
        Op::Service(_) => "service",
        Op::RemoveService(_) => "remove service",
        Op::NodeAvailability(_) => "node availability",
        Op::RemoveNode(_) => "remove node",
        Op::PendingReason(_) => "pending reason",
        Op::ReserveServerId(_) => "reserve server id",
        Op::InitPki(_) => "init pki",
        Op::RecordCert(_) => "record certificate",
        Op::RevokeCert(_) => "revoke certificate",
        Op::RotateToken(_) => "rotate token",
        Op::RotateCa(_) => "rotate ca",
        Op::FinishCaRotation(_) => "finish ca rotation",
        Op::CaNodesMoved(_) => "ca nodes moved",
    }
}

/// Timing and identity of one Raft member.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: u64,
    /// The address other members and agents reach this server at.
    pub advertise: String,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and compact the log) every this many entries.
    pub snapshot_logs: u64,
    /// The size of a raft log segment; compaction deletes whole segments.
    pub log_segment_bytes: u64,
}

/// Errors of starting the Raft layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("opening the raft store: {0}")]
    Store(#[from] store::StoreError),
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("reading the raft store: {0}")]
    State(#[from] crate::state::StateError),
    #[error("starting raft: {0}")]
    Fatal(String),
}

/// Where a member keeps its snapshot files.
pub fn snapshot_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("snapshots")
}

/// Opens the rocksdb store under `data_dir` and starts the Raft member.
/// With `bootstrap`, a fresh store is initialized as a one-member cluster;
/// a store that already holds a cluster is reused as it is.
pub async fn start(
    data_dir: &Path,
    cfg: &RaftConfig,
    bootstrap: bool,
    restore: Option<&[u8]>,
    tls: std::sync::Arc<crate::tls::ServerTls>,
) -> Result<(BerthRaft, StateReader), RaftError> {
    let db = store::open(&data_dir.join("raft"))?;
    let wal = store::open_wal(&db, &data_dir.join("raft-log"), cfg.log_segment_bytes)?;
    if let Some(backup) = restore {
        if !wal.is_empty() {
            return Err(store::StoreError::NotEmpty.into());
        }
        let rows = store::restore(&db, backup)?;
        tracing::info!(rows, "restored the state from a backup");
    }
    let log_used = !wal.is_empty();
    let (log_store, state_machine, reader) =
        store::split(db, wal, cfg.node_id, snapshot_dir(data_dir))?;
    let config = openraft::Config {
        cluster_name: "berth".to_string(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_min_ms,
        election_timeout_max: cfg.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: (cfg.snapshot_logs / 5).max(10),
        purge_batch_size: 1,
        // A member whose data dir was wiped comes back with an empty log;
        // the leader then starts it over instead of refusing it.
        allow_log_reversion: Some(true),
        // Replicate an entry as soon as it is written, while the leader's
        // own fsync runs (raft/wal.rs); the leader's copy counts toward
        // the quorum only once durable.
        broadcast_submitted_on_append: Some(true),
        // At most 64 entries in one AppendEntries, so that a request of
        // batched entries (each at most berth_proto::limits::MAX_ENTRY)
        // stays under the gRPC message limit.
        max_payload_entries: 64,
        // A follower whose election timer fires asks first whether the
        // others would vote for it, and leaves the term alone unless a
        // majority would. Without it, one member starved of CPU for a few
        // hundred milliseconds (a busy host, a debug build) raised the
        // term and deposed a healthy leader again and again: an election
        // storm that kept the cluster from committing for a minute.
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()?;
    let already_initialized = log_used || reader.has_membership()?;
    let raft = openraft::Raft::new(
        cfg.node_id,
        Arc::new(config),
        network::NetworkFactory::new(faults::Faults::from_env(data_dir), tls),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| RaftError::Fatal(e.to_string()))?;
    if bootstrap && !already_initialized {
        let mut members = BTreeMap::new();
        members.insert(
            cfg.node_id,
            BasicNode {
                addr: cfg.advertise.clone(),
            },
        );
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id = cfg.node_id, "bootstrapped a new cluster"),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => tracing::info!("store already holds a cluster; bootstrap skipped"),
            Err(e) => return Err(RaftError::Fatal(e.to_string())),
        }
    }
    Ok((raft, reader))
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use prost::Message;
        serialize_proto_bytes(&self.0.encode_to_vec(), s)
    }
}

/// Protobuf bytes in a serde format: as bytes where the format has them,
/// as a hex string in a human-readable one (JSON would otherwise write an
/// array of numbers, three to four characters a byte).
fn serialize_proto_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&hex::encode(bytes))
    } else {
        s.serialize_bytes(bytes)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use prost::Message;
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        records::Command::decode(bytes.as_slice())
            .map(Request)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use prost::Message;
        serialize_proto_bytes(&self.0.encode_to_vec(), s)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use prost::Message;
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        records::CommandResult::decode(bytes.as_slice())
            .map(Response)
            .map_err(serde::de::Error::custom)
    }
}

/// Reads bytes written by `serialize_bytes`, which self-describing formats
/// such as JSON render as a sequence of numbers.
fn serde_bytes_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("protobuf bytes")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            hex::decode(v).map_err(E::custom)
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    // deserialize_any: a string (hex), a sequence (older builds), or bytes.
    if d.is_human_readable() {
        d.deserialize_any(V)
    } else {
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_cross_json_as_hex() {
        let req = Request(records::Command {
            schema: 1,
            op: Some(records::command::Op::Remove(records::RemoveContainer {
                id: "abc".into(),
                at_ms: 7,
            })),
        });
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.starts_with('"'), "{json}");
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
        // The number-array form of earlier builds is still read.
        use prost::Message;
        let array = serde_json::to_string(&req.0.encode_to_vec()).unwrap();
        let back: Request = serde_json::from_str(&array).unwrap();
        assert_eq!(back, req);
    }
}
