//! The server side of the agent session: registration, heartbeats,
//! transitions, log chunks and image inventories come in; assignments,
//! acknowledgements and imports go out.

use std::pin::Pin;

use berth_proto::agent::{
    agent_message, agent_session_server::AgentSession, server_message, AgentMessage, HeartbeatAck,
    LocalContainer, LogAck, Register, Registered, ServerMessage,
};
use berth_proto::records::{self, command::Op, NodeStatus, SCHEMA_VERSION};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{now_ms, App, AppError};
use crate::state::status::{parse_state, Status as CStatus};

/// The gRPC service agents open their session on.
pub struct SessionService {
    app: App,
}

impl SessionService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

type AckStream = Pin<Box<dyn Stream<Item = Result<HeartbeatAck, Status>> + Send>>;

#[tonic::async_trait]
impl AgentSession for SessionService {
    type SessionStream = OutStream;
    type HeartbeatsStream = AckStream;

    /// The answer to a ReadLogs: its pieces go to the reader that asked,
    /// as fast as it takes them. Only the node the read was sent to, on
    /// its current session, may answer it.
    async fn log_read(
        &self,
        req: Request<Streaming<berth_proto::agent::LogPiece>>,
    ) -> Result<Response<berth_proto::agent::LogReadEnd>, Status> {
        let cert_node = node_of(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a LogRead stream begins with its request"))?;
        speaks_for(&cert_node, &first.node)?;
        if !self
            .app
            .nodes
            .is_current(&first.node, first.session_id)
            .await
        {
            return Err(Status::permission_denied(format!(
                "session {} of node {} is not current here",
                first.session_id, first.node
            )));
        }
        let Some(out) = self
            .app
            .nodes
            .take_log_read(&first.node, first.request_id)
            .await
        else {
            return Err(Status::not_found(format!(
                "no log read {} is waiting for node {}",
                first.request_id, first.node
            )));
        };
        // An empty batch says the read has begun (the reader stops waiting
        // for the node to answer at all).
        if out.send(Ok(Some(Vec::new()))).await.is_err() {
            return Ok(Response::new(berth_proto::agent::LogReadEnd {}));
        }
        loop {
            let piece = match inbound.message().await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    let _ = out
                        .send(Err(format!("node {} ended the read early", first.node)))
                        .await;
                    break;
                }
                Err(s) => {
                    let _ = out.send(Err(s.message().to_string())).await;
                    break;
                }
            };
            if !piece.lines.is_empty() && out.send(Ok(Some(piece.lines))).await.is_err() {
                // The reader is gone: ending the stream stops the agent.
                break;
            }
            if piece.end {
                let end = if piece.error.is_empty() {
                    Ok(None)
                } else {
                    Err(piece.error)
                };
                let _ = out.send(end).await;
                break;
            }
        }
        Ok(Response::new(berth_proto::agent::LogReadEnd {}))
    }

    /// Heartbeats of a session, answered one by one: the answer renews the
    /// agent's lease. The stream ends when the session is no longer the
    /// node's current one (it expired, or a newer one replaced it).
    async fn heartbeats(
        &self,
        req: Request<Streaming<berth_proto::agent::Heartbeat>>,
    ) -> Result<Response<AckStream>, Status> {
        let cert_node = node_of(&req)?;
        let mut inbound = req.into_inner();
        let nodes = self.app.nodes.clone();
        let app = self.app.clone();
        let (tx, rx) = mpsc::channel::<Result<HeartbeatAck, Status>>(16);
        tokio::spawn(async move {
            loop {
                let hb = match inbound.message().await {
                    Ok(Some(hb)) => hb,
                    _ => return,
                };
                if let Err(refused) = speaks_for(&cert_node, &hb.node) {
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                if !nodes.heartbeat(&hb.node, hb.session_id).await {
                    let _ = tx
                        .send(Err(Status::not_found(format!(
                            "session {} of node {} is not current here",
                            hb.session_id, hb.node
                        ))))
                        .await;
                    return;
                }
                // Which CA signs: an agent of another renews (a rotation).
                let ca = app.ca_view();
                let ack = HeartbeatAck {
                    seq: hb.seq,
                    ca_digest: ca.renew_to,
                    ca_rotating: ca.rotating,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let cert_node = node_of(&req)?;
        let mut inbound = req.into_inner();
        let register = match inbound.message().await? {
            Some(AgentMessage {
                msg: Some(agent_message::Msg::Register(r)),
            }) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Register",
                ))
            }
        };
        if register.node.is_empty() {
            return Err(Status::invalid_argument("Register names no node"));
        }
        speaks_for(&cert_node, &register.node)?;
        // Only the leader holds agent sessions, and only while a majority
        // confirms it; others send the agent on.
        let metrics = crate::raft::metrics(&self.app.raft);
        if !self.app.is_effective_leader().await {
            // A leader that cannot confirm itself names no one: the agent
            // tries the next server.
            let leader = metrics
                .current_leader
                .filter(|l| *l != metrics.id)
                .and_then(|l| metrics.membership_config.membership().get_node(&l).cloned())
                .map(|n| n.addr);
            return Err(Status::unavailable(format!(
                "not the leader; leader: {}",
                leader.unwrap_or_default()
            )));
        }
        let node = register.node.clone();
        // Attached before the node is recorded Ready, so that the liveness
        // check never sees a Ready node without its session.
        let (tx, rx) = mpsc::channel::<ServerMessage>(1024);
        // What was sent to an earlier session is forgotten before this one
        // can be sent anything: a placement delivered on this session is
        // then never taken for unsent and delivered again (a second Run of
        // a container that has already run and exited runs it again).
        self.app.scheduler.node_reconnected(&node);
        let (session_id, removed) = self.app.nodes.attach(&node, tx.clone()).await;
        if let Err(e) = upsert_node(&self.app, &register).await {
            self.app.nodes.detach(&node, session_id).await;
            return Err(to_status(e));
        }
        tracing::info!(%node, session_id, "agent registered");
        // Where each of this node's container logs stands, so that the agent
        // resends what the cluster has not committed (invariant 7), and which
        // of its local containers the cluster no longer places there.
        let containers = self
            .app
            .containers()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let log_next_seq = containers
            .iter()
            .filter(|c| c.node == node)
            .map(|c| (c.id.clone(), c.log_next_seq))
            .collect();
        let stale = stale_copies(&node, &register.containers, &containers);
        if !stale.is_empty() {
            tracing::info!(%node, count = stale.len(), "the node holds stale copies; it removes them");
        }
        let _ = tx
            .send(ServerMessage {
                msg: Some(server_message::Msg::Registered(Registered {
                    node: node.clone(),
                    log_next_seq,
                    stale,
                    session_id,
                    log_tail_lines: self.app.config.log_tail.lines,
                })),
            })
            .await;
        let app = self.app.clone();
        tokio::spawn(async move {
            if let Err(e) = reconcile(&app, &register).await {
                tracing::warn!(%node, "reconciling the node's containers: {e}");
            }
            // A pass may have held off for the reconcile above.
            app.scheduler.wake.notify_one();
            let reason = tokio::select! {
                r = serve(&app, &node, session_id, &mut inbound, &tx) => r,
                // The node removed (its certificate revoked): nothing more
                // of its agent is taken. (Dropped without a removal, the
                // sender ends nothing: the stream is read to its end.)
                _ = async {
                    if removed.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => "the node was removed from the cluster".to_string(),
            };
            tracing::info!(%node, session_id, "agent session ended: {reason}");
            if let Some(last) = app.nodes.detach(&node, session_id).await {
                mark_down(&app, &node, down_since(&app, last)).await;
            }
        });
        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

/// The node an agent's certificate names: the only node it speaks for.
fn node_of<T>(req: &Request<T>) -> Result<String, Status> {
    match crate::auth::caller(req)? {
        crate::auth::Caller::Member(id) if id.role == crate::pki::Role::Agent => Ok(id.name),
        _ => Err(Status::permission_denied(
            "only an agent's certificate opens a node's session",
        )),
    }
}

/// Refuses a message about another node than the certificate's.
fn speaks_for(cert_node: &str, claimed: &str) -> Result<(), Status> {
    if cert_node == claimed {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "this agent's certificate is for node {cert_node}, and the message names node \
         {claimed}: an agent speaks only for its own node"
    )))
}

/// When a node whose last heartbeat came at `last` counts as Down: one
/// TTL after it, even if its session ended sooner (an agent killed at
/// once). The reschedule delay counts from there, so that the agent's
/// lease, which runs from its last answered heartbeat, ends first.
pub fn down_since(app: &App, last: std::time::Instant) -> i64 {
    now_ms() - last.elapsed().as_millis() as i64 + app.config.node_ttl.as_millis() as i64
}

/// Commits that a node is Down, since `since_ms` (see [`down_since`]).
pub async fn mark_down(app: &App, node: &str, since_ms: i64) {
    let op = Op::NodeStatus(records::SetNodeStatus {
        name: node.to_string(),
        status: NodeStatus::Down as i32,
        at_ms: since_ms,
    });
    if let Err(e) = app.write(op).await {
        tracing::warn!(%node, "could not record the node as down: {e}");
    }
}

fn to_status(e: AppError) -> Status {
    match e {
        // The agent's own report is at fault: trying again will not help.
        AppError::Invalid(_) => Status::invalid_argument(e.to_string()),
        e => Status::unavailable(e.to_string()),
    }
}

/// An agent's free text (an error), cut to what a command may carry.
fn clip_text(mut s: String) -> String {
    let max = crate::state::validate::MAX_TEXT;
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn images_to_records(images: &[berth_proto::agent::Image]) -> Vec<records::Image> {
    images
        .iter()
        .map(|i| records::Image {
            id: i.id.clone(),
            tags: i.tags.clone(),
            size: i.size,
            created_ms: i.created_ms,
        })
        .collect()
}

async fn upsert_node(app: &App, r: &Register) -> Result<(), AppError> {
    let node = records::Node {
        schema: SCHEMA_VERSION,
        name: r.node.clone(),
        status: NodeStatus::Ready as i32,
        kernel: r.kernel.clone(),
        cgroup_version: r.cgroup_version.clone(),
        cpus: r.cpus,
        memory_bytes: r.memory_bytes,
        images: images_to_records(&r.images),
        updated_at_ms: now_ms(),
        // Kept from the stored record when applied.
        labels: Default::default(),
        availability: 0,
        agent_labels: r.labels.clone(),
    };
    app.write(Op::Node(records::UpsertNode { node: Some(node) }))
        .await?;
    Ok(())
}

/// The local containers of `node` that the cluster no longer places
/// there: removed, moved to another node, or placed again at a newer
/// generation (invariant 3). The agent stops and deletes them first.
pub fn stale_copies(
    node: &str,
    local: &[LocalContainer],
    cluster: &[records::Container],
) -> Vec<LocalContainer> {
    local
        .iter()
        .filter(|l| match cluster.iter().find(|c| c.id == l.id) {
            None => true,
            Some(c) => c.node != node || c.generation != l.generation,
        })
        .cloned()
        .collect()
}

/// Brings the cluster's view and the agent's local state together after a
/// registration: the reports the agent missed, for the containers it holds
/// at their current generation. (Assignments it has not heard of are the
/// reconciler's, which sends them again to a node whose session is new.)
async fn reconcile(app: &App, r: &Register) -> Result<(), AppError> {
    let containers: std::collections::HashMap<String, records::Container> = app
        .containers()
        .await?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    for local in &r.containers {
        let Some(c) = containers.get(&local.id) else {
            continue;
        };
        if c.node != r.node || c.generation != local.generation {
            continue;
        }
        let Some(to) = parse_state(&local.state) else {
            continue;
        };
        if to != c.state() && CStatus(c.state()).can_move_to(to) {
            let op = Op::Transition(records::RecordTransition {
                id: c.id.clone(),
                node: r.node.clone(),
                generation: local.generation,
                to: to as i32,
                exit_code: local.exit_code,
                at_ms: now_ms(),
                error: String::new(),
                image_id: String::new(),
                oom_killed: false,
            });
            if let Err(e) = app.write(op).await {
                tracing::debug!("reconcile transition refused: {e}");
            }
        }
    }
    Ok(())
}

/// Handles the agent's messages in order until the stream ends; returns why.
async fn serve(
    app: &App,
    node: &str,
    session_id: u64,
    inbound: &mut Streaming<AgentMessage>,
    tx: &mpsc::Sender<ServerMessage>,
) -> String {
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "the agent closed the stream".into(),
            Err(e) => return format!("stream error: {e}"),
        };
        let Some(msg) = msg.msg else { continue };
        match msg {
            // Heartbeats come on their own stream (heartbeats() above);
            // one on the session still counts.
            agent_message::Msg::Heartbeat(_) => {
                if !app.nodes.heartbeat(node, session_id).await {
                    return "the session expired or was replaced".into();
                }
            }
            agent_message::Msg::AssignAck(a) => {
                app.scheduler.acked(node, &a.container_id, a.generation);
            }
            agent_message::Msg::Register(_) => return "a second Register on one session".into(),
            agent_message::Msg::Transition(t) => {
                let Some(to) = parse_state(&t.to) else {
                    tracing::warn!(%node, state = %t.to, "unknown state in a transition");
                    continue;
                };
                let op = Op::Transition(records::RecordTransition {
                    id: t.container_id.clone(),
                    node: node.to_string(),
                    generation: t.generation,
                    to: to as i32,
                    exit_code: t.exit_code,
                    at_ms: t.at_ms,
                    error: clip_text(t.error),
                    image_id: t.image_id,
                    oom_killed: t.oom_killed,
                });
                match app.write(op).await {
                    Ok(_) => {}
                    Err(AppError::Refused(why)) => {
                        tracing::debug!(%node, "transition refused: {why}")
                    }
                    Err(AppError::Invalid(why)) => {
                        tracing::warn!(%node, "transition refused: {why}")
                    }
                    Err(e) => return format!("cannot commit: {e}"),
                }
            }
            agent_message::Msg::Logs(chunk) => {
                let id = chunk.container_id.clone();
                let first = chunk.lines.first().map(|l| l.seq).unwrap_or(0);
                let last = chunk.lines.last().map(|l| l.seq).unwrap_or(0);
                let ack = |next_seq: u64, stop: bool| ServerMessage {
                    msg: Some(server_message::Msg::LogAck(LogAck {
                        container_id: id.clone(),
                        next_seq,
                        chunk_first_seq: first,
                        stop,
                    })),
                };
                // What this session sent before is applied already (the
                // loop waits for each commit): a batch of duplicates, or
                // one that would leave a gap, needs no Raft entry at all,
                // only the answer of where to go on from.
                match app.state.container(&id) {
                    Ok(Some(c)) if c.node == node && c.generation == chunk.generation => {
                        let next = c.log_next_seq.max(1);
                        let skips = chunk.skip_to > next && first == chunk.skip_to;
                        if chunk.lines.is_empty() || (!skips && (first > next || last < next)) {
                            let _ = tx.send(ack(next, false)).await;
                            continue;
                        }
                    }
                    // Gone, or placed elsewhere: this copy's lines are not
                    // the container's any more.
                    Ok(_) => {
                        let _ = tx.send(ack(0, true)).await;
                        continue;
                    }
                    Err(e) => return format!("cannot read the state: {e}"),
                }
                let lines = chunk
                    .lines
                    .into_iter()
                    .map(|l| records::LogLine {
                        schema: SCHEMA_VERSION,
                        seq: l.seq,
                        stream: if l.stream == "stderr" {
                            records::LogStream::Stderr as i32
                        } else {
                            records::LogStream::Stdout as i32
                        },
                        time_ns: l.time_ns,
                        line: l.line.into(),
                    })
                    .collect();
                let op = Op::Logs(records::AppendLogs {
                    id: id.clone(),
                    node: node.to_string(),
                    generation: chunk.generation,
                    lines,
                    keep_lines: app.config.log_tail.lines,
                    keep_bytes: app.config.log_tail.bytes,
                    skip_to: chunk.skip_to,
                });
                match app.write(op).await {
                    Ok(res) => {
                        let next_seq = res.container.map(|c| c.log_next_seq).unwrap_or(0);
                        let _ = tx.send(ack(next_seq, false)).await;
                    }
                    Err(AppError::Refused(why)) => {
                        tracing::debug!(%node, "log chunk refused: {why}");
                        let _ = tx.send(ack(0, true)).await;
                    }
                    Err(AppError::Invalid(why)) => {
                        tracing::warn!(%node, "log chunk refused: {why}");
                        let _ = tx.send(ack(0, true)).await;
                    }
                    Err(e) => return format!("cannot commit: {e}"),
                }
            }
            agent_message::Msg::Images(inv) => {
                let Ok(Some(mut rec)) = app.state.node(node) else {
                    continue;
                };
                rec.images = images_to_records(&inv.images);
                rec.updated_at_ms = now_ms();
                match app
                    .write(Op::Node(records::UpsertNode { node: Some(rec) }))
                    .await
                {
                    Ok(_) => {}
                    Err(AppError::Invalid(why)) => {
                        tracing::warn!(%node, "image inventory refused: {why}")
                    }
                    Err(e) => return format!("cannot commit: {e}"),
                }
            }
            agent_message::Msg::ImageReply(r) => app.nodes.image_reply(node, r).await,
            agent_message::Msg::AttachOutput(d) => app.nodes.attachment_output(node, d).await,
        }
    }
}
