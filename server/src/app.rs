//! The server's shared core: the Raft handle, the state reader and the
//! agent sessions, with the one function every write goes through.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::records::{self, command::Op, CommandResult, SCHEMA_VERSION};

use crate::nodes::Nodes;
use crate::raft::{BerthRaft, Request};
use crate::state::{StateError, StateReader};

/// Settings of a running server beyond Raft's own.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// An agent whose last heartbeat is older than this is Down.
    pub node_ttl: Duration,
    /// A node Down for this long is lost: its containers become Dead.
    pub node_lost: Duration,
}

/// Errors of the server core, mapped to gRPC statuses at the api edge.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("this server is not the leader{}", leader_hint(.0))]
    NotLeader(Option<String>),
    #[error("the cluster could not commit the change: {0}")]
    Raft(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    State(#[from] StateError),
}

fn leader_hint(leader: &Option<String>) -> String {
    match leader {
        Some(l) => format!(" (the leader is at {l})"),
        None => " (no leader is known yet)".to_string(),
    }
}

/// The shared core of one server.
#[derive(Clone)]
pub struct App {
    pub raft: BerthRaft,
    pub state: StateReader,
    pub nodes: Arc<Nodes>,
    pub config: AppConfig,
}

impl App {
    pub fn new(raft: BerthRaft, state: StateReader, config: AppConfig) -> Self {
        Self {
            raft,
            state,
            nodes: Arc::new(Nodes::default()),
            config,
        }
    }

    /// Commits one command through Raft and returns what applying it gave.
    /// The caller hears "ok" only after the commit (invariant 1); a command
    /// the state machine refused comes back as [`AppError::Refused`].
    pub async fn write(&self, op: Op) -> Result<CommandResult, AppError> {
        let cmd = records::Command {
            schema: SCHEMA_VERSION,
            op: Some(op),
        };
        match self.raft.client_write(Request(cmd)).await {
            Ok(resp) => {
                let result = resp.data.0;
                if result.error.is_empty() {
                    Ok(result)
                } else {
                    Err(AppError::Refused(result.error))
                }
            }
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => Err(AppError::NotLeader(f.leader_node.map(|n| n.addr))),
            Err(e) => Err(AppError::Raft(e.to_string())),
        }
    }

    /// Waits until this server's state is current with the leader's commit
    /// (a read index), so that a read after it sees every acknowledged write.
    pub async fn linearize(&self) -> Result<(), AppError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(f),
            )) => Err(AppError::NotLeader(f.leader_node.map(|n| n.addr))),
            Err(e) => Err(AppError::Raft(e.to_string())),
        }
    }
}

impl App {
    /// True if this server leads and a majority confirms it now (a read
    /// index within a second): a leader cut off from the others is not.
    pub async fn is_effective_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.raft.ensure_linearizable()).await,
            Ok(Ok(_))
        )
    }
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
