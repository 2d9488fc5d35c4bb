//! Agents and their sessions: who is connected, heartbeats and liveness,
//! and the server side of the agent session stream (the edge where
//! agent.proto types are converted).

pub mod assignment;
pub mod liveness;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use berth_proto::agent::{image_request, server_message, ImageReply, ImageRequest, ServerMessage};
use tokio::sync::{mpsc, Mutex};

/// The largest piece of an upload sent to an agent in one message.
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// The last reply of an image operation (up to 600 s): the result's JSON,
/// or the agent's error.
async fn last_reply(
    node: &str,
    mut replies: mpsc::UnboundedReceiver<ImageReply>,
) -> Result<String, String> {
    let wait = async {
        while let Some(r) = replies.recv().await {
            if r.last {
                return if r.error.is_empty() {
                    Ok(r.json)
                } else {
                    Err(r.error)
                };
            }
        }
        Err(format!("node {node} disconnected before answering"))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(600), wait).await {
        Ok(r) => r,
        Err(_) => Err(format!("node {node} did not answer in 600 s")),
    }
}

/// An image operation whose upload is on its way to one node.
pub struct Upload {
    node: String,
    request_id: u64,
    replies: mpsc::UnboundedReceiver<ImageReply>,
}

impl Upload {
    /// The replies to come, for a caller that relays them as they come
    /// (a build's progress) rather than waiting for the last.
    pub fn into_replies(self) -> mpsc::UnboundedReceiver<ImageReply> {
        self.replies
    }
}

/// One connected agent.
struct Connected {
    /// Distinguishes this session from a later one of the same node.
    session_id: u64,
    tx: mpsc::Sender<ServerMessage>,
    last_heartbeat: Instant,
    /// Fired when the node is removed: the reading of its agent's
    /// messages stops at once. (A session only forgotten, replaced or
    /// expired, is read until its stream ends: answers to requests sent on
    /// it still arrive there.)
    cut: tokio::sync::oneshot::Sender<()>,
}

/// Where an attachment's output goes: the client's stream.
type AttachSender = mpsc::Sender<Result<berth_proto::cluster::AttachOutput, tonic::Status>>;

/// One step of a log read: a batch of lines, the end (`None`), or why the
/// read failed. A channel that closes without its end (the node's session
/// ended) is a failure too.
pub type LogReadEvent = Result<Option<Vec<berth_proto::agent::LogLine>>, String>;

/// Where the lines of a log read go. The channel is small: the client's
/// pace sets the agent's.
pub type LogReadSender = mpsc::Sender<LogReadEvent>;

/// The registry of agent sessions on this server. Heartbeats live here,
/// in memory, and never go through Raft (invariant 4).
#[derive(Default)]
pub struct Nodes {
    connected: Mutex<HashMap<String, Connected>>,
    /// Open attachments: where each one's output goes, with its node.
    attachments: Mutex<HashMap<u64, (String, AttachSender)>>,
    /// Image requests waiting for their replies, with the node they went to.
    requests: Mutex<HashMap<u64, (String, mpsc::UnboundedSender<ImageReply>)>>,
    /// Log reads waiting for their node's LogRead stream, with the node.
    log_reads: Mutex<HashMap<u64, (String, LogReadSender)>>,
    next_id: AtomicU64,
}

impl Nodes {
    /// Records a new session for `node`, replacing any older one. The
    /// receiver fires if the node is removed ([`Nodes::disconnect`]):
    /// whoever reads the session's messages stops then.
    pub async fn attach(
        &self,
        node: &str,
        tx: mpsc::Sender<ServerMessage>,
    ) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let session_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (cut, removed) = tokio::sync::oneshot::channel();
        self.connected.lock().await.insert(
            node.to_string(),
            Connected {
                session_id,
                tx,
                last_heartbeat: Instant::now(),
                cut,
            },
        );
        (session_id, removed)
    }

    /// Forgets the session, if it is still the node's current one, and
    /// fails the image requests waiting on it. Returns when its last
    /// heartbeat came if it was.
    pub async fn detach(&self, node: &str, session_id: u64) -> Option<Instant> {
        let mut map = self.connected.lock().await;
        if map.get(node).map(|c| c.session_id) == Some(session_id) {
            let last = map.remove(node).map(|c| c.last_heartbeat);
            self.requests.lock().await.retain(|_, (n, _)| n != node);
            self.attachments.lock().await.retain(|_, (n, _)| n != node);
            self.log_reads.lock().await.retain(|_, (n, _)| n != node);
            last
        } else {
            None
        }
    }

    /// Ends a node's session, whichever it is (the node was removed): its
    /// heartbeats are refused from now on, and the agent's reconnection
    /// meets its revoked certificate.
    pub async fn disconnect(&self, node: &str) {
        let session = self.connected.lock().await.remove(node);
        if let Some(c) = session {
            let _ = c.cut.send(());
            self.requests.lock().await.retain(|_, (n, _)| n != node);
            self.attachments.lock().await.retain(|_, (n, _)| n != node);
            self.log_reads.lock().await.retain(|_, (n, _)| n != node);
        }
    }

    /// Drops every session (this server cannot lead): each agent sees its
    /// stream end and looks for the leader elsewhere.
    pub async fn drop_all(&self) -> usize {
        let mut map = self.connected.lock().await;
        let n = map.len();
        map.clear();
        n
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

    /// True if `session_id` is the node's current session here.
    pub async fn is_current(&self, node: &str, session_id: u64) -> bool {
        self.connected
            .lock()
            .await
            .get(node)
            .is_some_and(|c| c.session_id == session_id)
    }

    /// True if the node has a live session here.
    pub async fn is_connected(&self, node: &str) -> bool {
        self.connected.lock().await.contains_key(node)
    }

    /// The nodes with a live session.
    pub async fn connected_names(&self) -> Vec<String> {
        self.connected.lock().await.keys().cloned().collect()
    }

    /// Removes and returns the sessions whose heartbeat is older than
    /// `ttl`, with when their last heartbeat came.
    pub async fn expire(&self, ttl: std::time::Duration) -> Vec<(String, u64, Instant)> {
        let mut map = self.connected.lock().await;
        let dead: Vec<(String, u64, Instant)> = map
            .iter()
            .filter(|(_, c)| c.last_heartbeat.elapsed() > ttl)
            .map(|(n, c)| (n.clone(), c.session_id, c.last_heartbeat))
            .collect();
        for (n, _, _) in &dead {
            map.remove(n);
        }
        dead
    }

    /// The session stream of every connected node.
    pub async fn senders(&self) -> HashMap<String, mpsc::Sender<ServerMessage>> {
        self.connected
            .lock()
            .await
            .iter()
            .map(|(n, c)| (n.clone(), c.tx.clone()))
            .collect()
    }

    /// Sends a message to a node's agent; false if it is not connected.
    pub async fn send(&self, node: &str, msg: ServerMessage) -> bool {
        let tx = match self.connected.lock().await.get(node) {
            Some(c) => c.tx.clone(),
            None => return false,
        };
        tx.send(msg).await.is_ok()
    }

    /// Sends an image operation (with its upload, if any) to a node's agent
    /// and returns the stream of its replies.
    pub async fn image_request(
        &self,
        node: &str,
        op: image_request::Op,
        data: &[u8],
    ) -> Result<mpsc::UnboundedReceiver<ImageReply>, String> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.requests
            .lock()
            .await
            .insert(request_id, (node.to_string(), tx));
        let mut chunks: Vec<&[u8]> = data.chunks(UPLOAD_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut op = Some(op);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let msg = ServerMessage {
                msg: Some(server_message::Msg::ImageRequest(ImageRequest {
                    request_id,
                    op: op.take(),
                    data: chunk.to_vec(),
                    last: i == last,
                })),
            };
            if !self.send(node, msg).await {
                self.requests.lock().await.remove(&request_id);
                return Err(format!("node {node} is not connected"));
            }
        }
        Ok(rx)
    }

    /// Starts an image operation whose upload follows in pieces
    /// ([`Upload::send`]): nothing of it is kept here but the piece on its
    /// way.
    pub async fn upload_start(&self, node: &str, op: image_request::Op) -> Result<Upload, String> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, replies) = mpsc::unbounded_channel();
        self.requests
            .lock()
            .await
            .insert(request_id, (node.to_string(), tx));
        let msg = ServerMessage {
            msg: Some(server_message::Msg::ImageRequest(ImageRequest {
                request_id,
                op: Some(op),
                data: Vec::new(),
                last: false,
            })),
        };
        if !self.send(node, msg).await {
            self.requests.lock().await.remove(&request_id);
            return Err(format!("node {node} is not connected"));
        }
        Ok(Upload {
            node: node.to_string(),
            request_id,
            replies,
        })
    }

    /// Sends an image operation and waits for its last reply: the result's
    /// JSON, or the agent's error.
    pub async fn image_call(
        &self,
        node: &str,
        op: image_request::Op,
        data: &[u8],
    ) -> Result<String, String> {
        let rx = self.image_request(node, op, data).await?;
        last_reply(node, rx).await
    }

    /// Sends the next piece of an upload (with `last`, the end of it).
    pub async fn upload_send(&self, u: &Upload, data: &[u8], last: bool) -> Result<(), String> {
        let msg = ServerMessage {
            msg: Some(server_message::Msg::ImageRequest(ImageRequest {
                request_id: u.request_id,
                op: None,
                data: data.to_vec(),
                last,
            })),
        };
        if self.send(&u.node, msg).await {
            Ok(())
        } else {
            Err(format!("node {} is not connected", u.node))
        }
    }

    /// Waits for an upload's last reply: the result's JSON, or the error.
    pub async fn upload_finish(&self, u: Upload) -> Result<String, String> {
        last_reply(&u.node, u.replies).await
    }

    /// Asks a node's agent to read a container's log from its own file;
    /// its lines come on the returned channel as the agent's LogRead
    /// stream brings them.
    pub async fn read_logs(
        &self,
        node: &str,
        mut req: berth_proto::agent::ReadLogs,
    ) -> Result<mpsc::Receiver<LogReadEvent>, String> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        req.request_id = request_id;
        let (tx, rx) = mpsc::channel(2);
        self.log_reads
            .lock()
            .await
            .insert(request_id, (node.to_string(), tx));
        let msg = ServerMessage {
            msg: Some(server_message::Msg::ReadLogs(req)),
        };
        if !self.send(node, msg).await {
            self.log_reads.lock().await.remove(&request_id);
            return Err(format!("node {node} is not connected"));
        }
        Ok(rx)
    }

    /// Takes the waiting log read `request_id`, if it was sent to `node`:
    /// the one node that may answer it.
    pub async fn take_log_read(&self, node: &str, request_id: u64) -> Option<LogReadSender> {
        let mut reads = self.log_reads.lock().await;
        match reads.get(&request_id) {
            Some((n, _)) if n == node => reads.remove(&request_id).map(|(_, tx)| tx),
            _ => None,
        }
    }

    /// Registers an attachment's output channel and returns its id.
    pub async fn open_attachment(&self, node: &str, tx: AttachSender) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.attachments
            .lock()
            .await
            .insert(id, (node.to_string(), tx));
        id
    }

    /// Hands a piece of an attachment's output to its client; the last
    /// piece closes the client's stream. Only the node the attachment is
    /// on may write to it: the ids are keyed by (node, id), and a piece
    /// another node sends is dropped.
    pub async fn attachment_output(&self, node: &str, d: berth_proto::agent::AttachData) {
        let tx = match self.attachments.lock().await.get(&d.stream_id) {
            Some((n, tx)) if n == node => tx.clone(),
            Some(_) => {
                tracing::warn!(%node, stream = d.stream_id, "dropped output for another node's attachment");
                return;
            }
            None => return,
        };
        let tx = Some(tx);
        if let Some(tx) = tx {
            if !d.data.is_empty() || d.exit_code.is_some() {
                let _ = tx
                    .send(Ok(berth_proto::cluster::AttachOutput {
                        data: d.data,
                        exit_code: d.exit_code,
                    }))
                    .await;
            }
        }
        if d.close {
            self.attachments.lock().await.remove(&d.stream_id);
        }
    }

    /// Hands an agent's reply to the request waiting for it, if the
    /// request was sent to that agent's node (keyed by (node, id)).
    pub async fn image_reply(&self, node: &str, reply: ImageReply) {
        let mut requests = self.requests.lock().await;
        let last = reply.last;
        match requests.get(&reply.request_id) {
            Some((n, tx)) if n == node => {
                let _ = tx.send(reply.clone());
            }
            Some(_) => {
                tracing::warn!(%node, request = reply.request_id, "dropped a reply to another node's request");
                return;
            }
            None => {}
        }
        if last {
            requests.remove(&reply.request_id);
        }
    }
}
