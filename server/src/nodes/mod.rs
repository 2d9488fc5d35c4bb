//! Agents and their sessions: who is connected, heartbeats and liveness,
//! and the server side of the agent session stream (the edge where
//! agent.proto types are converted).

pub mod assignment;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use berth_proto::agent::{server_message, ImportImage, ServerMessage};
use tokio::sync::{mpsc, oneshot, Mutex};

/// The largest piece of an image tarball sent in one message.
pub const IMPORT_CHUNK: usize = 1 << 20;

/// One connected agent.
struct Connected {
    /// Distinguishes this session from a later one of the same node.
    session_id: u64,
    tx: mpsc::Sender<ServerMessage>,
    last_heartbeat: Instant,
}

/// What an agent answered to an import.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    pub node: String,
    pub result: Result<String, String>,
}

/// The registry of agent sessions on this server. Heartbeats live here,
/// in memory, and never go through Raft (invariant 4).
#[derive(Default)]
pub struct Nodes {
    connected: Mutex<HashMap<String, Connected>>,
    imports: Mutex<HashMap<u64, oneshot::Sender<Result<String, String>>>>,
    next_id: AtomicU64,
}

impl Nodes {
    /// Records a new session for `node`, replacing any older one.
    pub async fn attach(&self, node: &str, tx: mpsc::Sender<ServerMessage>) -> u64 {
        let session_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.connected.lock().await.insert(
            node.to_string(),
            Connected {
                session_id,
                tx,
                last_heartbeat: Instant::now(),
            },
        );
        session_id
    }

    /// Forgets the session, if it is still the node's current one. Returns
    /// true if it was.
    pub async fn detach(&self, node: &str, session_id: u64) -> bool {
        let mut map = self.connected.lock().await;
        if map.get(node).map(|c| c.session_id) == Some(session_id) {
            map.remove(node);
            true
        } else {
            false
        }
    }

    /// Records a heartbeat; false if the session is no longer the node's
    /// current one (it expired or was replaced).
    pub async fn heartbeat(&self, node: &str, session_id: u64) -> bool {
        match self.connected.lock().await.get_mut(node) {
            Some(c) if c.session_id == session_id => {
                c.last_heartbeat = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// True if the node has a live session here.
    pub async fn is_connected(&self, node: &str) -> bool {
        self.connected.lock().await.contains_key(node)
    }

    /// The nodes with a live session.
    pub async fn connected_names(&self) -> Vec<String> {
        self.connected.lock().await.keys().cloned().collect()
    }

    /// Removes and returns the sessions whose heartbeat is older than `ttl`.
    pub async fn expire(&self, ttl: std::time::Duration) -> Vec<(String, u64)> {
        let mut map = self.connected.lock().await;
        let dead: Vec<(String, u64)> = map
            .iter()
            .filter(|(_, c)| c.last_heartbeat.elapsed() > ttl)
            .map(|(n, c)| (n.clone(), c.session_id))
            .collect();
        for (n, _) in &dead {
            map.remove(n);
        }
        dead
    }

    /// Sends a message to a node's agent; false if it is not connected.
    pub async fn send(&self, node: &str, msg: ServerMessage) -> bool {
        let tx = match self.connected.lock().await.get(node) {
            Some(c) => c.tx.clone(),
            None => return false,
        };
        tx.send(msg).await.is_ok()
    }

    /// Sends an image tarball to a node's agent and waits for its answer.
    pub async fn import(&self, node: &str, reference: &str, data: &[u8]) -> ImportOutcome {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.imports.lock().await.insert(request_id, tx);
        let outcome = |result| ImportOutcome {
            node: node.to_string(),
            result,
        };
        let mut chunks: Vec<&[u8]> = data.chunks(IMPORT_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let msg = ServerMessage {
                msg: Some(server_message::Msg::ImportImage(ImportImage {
                    request_id,
                    reference: reference.to_string(),
                    data: chunk.to_vec(),
                    last: i == last,
                })),
            };
            if !self.send(node, msg).await {
                self.imports.lock().await.remove(&request_id);
                return outcome(Err(format!("node {node} disconnected during the import")));
            }
        }
        match tokio::time::timeout(std::time::Duration::from_secs(300), rx).await {
            Ok(Ok(r)) => outcome(r),
            Ok(Err(_)) => outcome(Err(format!("node {node} disconnected during the import"))),
            Err(_) => {
                self.imports.lock().await.remove(&request_id);
                outcome(Err(format!(
                    "node {node} did not answer the import in 300 s"
                )))
            }
        }
    }

    /// Hands an agent's import answer to the request waiting for it.
    pub async fn import_done(&self, request_id: u64, result: Result<String, String>) {
        if let Some(tx) = self.imports.lock().await.remove(&request_id) {
            let _ = tx.send(result);
        }
    }
}
