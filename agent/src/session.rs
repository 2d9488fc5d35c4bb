//! The agent's connection to the cluster: one bidirectional stream to the
//! leader. It registers with the node's full local state, heartbeats,
//! hands assignments to the supervisor, and sends what the supervisor
//! reports. When the stream breaks it reconnects to any server with
//! backoff; containers keep running meanwhile.
//!
//! It is the one place where agent.proto meets the node's typed orders and
//! reports (orders.rs): `wire` below converts both ways.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::{
    self, agent_message, agent_session_client::AgentSessionClient, image_request, server_message,
    AgentMessage, Heartbeat, Register,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::Engine;
use crate::orders::Report;

/// How the agent reaches the cluster.
#[derive(Clone)]
pub struct SessionConfig {
    /// The node's certificate, presented on every connection.
    pub tls: Arc<crate::credentials::AgentTls>,
    /// Server addresses (HOST:PORT); any of them leads to the leader.
    pub servers: Vec<String>,
    pub node: String,
    pub heartbeat: Duration,
    /// Labels this node registers with (--label K=V).
    pub labels: std::collections::HashMap<String, String>,
}

/// Facts about this host sent at registration.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub kernel: String,
    pub cgroup_version: String,
    pub cpus: u64,
    pub memory_bytes: u64,
}

impl HostFacts {
    /// Reads the kernel release, cgroup layout, CPUs and memory.
    pub fn probe() -> Self {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroup_version = crate::runtime::cgroups::Layout::detect(std::path::Path::new(
            crate::runtime::shim::CGROUP_ROOT,
        ))
        .version();
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0);
        Self {
            kernel,
            cgroup_version: cgroup_version.to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
            memory_bytes,
        }
    }
}

/// A server's endpoint and the TLS to reach it with: the session and
/// each of its side streams (heartbeats, log reads) open their own
/// connection to it.
/// Each connection takes the node's current certificate (a renewal
/// revokes the one before).
#[derive(Clone)]
struct Link {
    endpoint: tonic::transport::Endpoint,
    tls: Arc<crate::credentials::AgentTls>,
}

impl Link {
    async fn connect(&self) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        self.endpoint
            .connect_with_connector(self.tls.connector())
            .await
    }
}

/// The connection a session's log reads share, made at the first read (or
/// right after the registration) and gone with the session. Each read is
/// a stream of its own on it, paced by HTTP/2 flow control; none waits for
/// a TCP and TLS handshake (1 to 2 ms of every `berth run`'s output when
/// each read had a connection of its own), and the bulk of reads never
/// shares the session's connection. If the connection breaks, the channel
/// makes a new one, with the certificate current then.
#[derive(Clone)]
struct ReadChannel {
    link: Link,
    channel: Arc<tokio::sync::OnceCell<tonic::transport::Channel>>,
}

impl ReadChannel {
    fn new(link: Link) -> Self {
        Self {
            link,
            channel: Arc::default(),
        }
    }

    async fn get(&self) -> Result<tonic::transport::Channel, String> {
        self.channel
            .get_or_try_init(|| self.link.connect())
            .await
            .cloned()
            .map_err(|e| berth_proto::one_line(&e))
    }
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a heartbeat every `every` on a connection of its own and renews
/// the lease from the send time of each one the server answers; reports
/// on `failed` why it stopped.
async fn heartbeats(
    endpoint: Link,
    node: String,
    session_id: u64,
    every: Duration,
    supervisor: Arc<dyn Engine>,
    failed: mpsc::Sender<String>,
) {
    let why = async {
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut client = AgentSessionClient::new(channel);
        let (tx, rx) = mpsc::channel::<Heartbeat>(4);
        let mut acks = client
            .heartbeats(ReceiverStream::new(rx))
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When each unanswered heartbeat left (CLOCK_MONOTONIC ms).
        let mut sent: std::collections::VecDeque<(u64, u64)> = Default::default();
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    seq += 1;
                    sent.push_back((seq, crate::runtime::lease::now_ms()));
                    if sent.len() > 64 {
                        sent.pop_front();
                    }
                    let beat = Heartbeat { seq, node: node.clone(), session_id };
                    if tx.send(beat).await.is_err() {
                        return Err::<(), String>("the heartbeat stream closed".into());
                    }
                }
                ack = acks.message() => {
                    let ack = match ack {
                        Ok(Some(a)) => a,
                        Ok(None) => return Err("the server ended the heartbeat stream".into()),
                        Err(s) => return Err(s.message().to_string()),
                    };
                    endpoint.tls.note_ca(&ack.ca_digest, ack.ca_rotating);
                    while let Some(&(s, at)) = sent.front() {
                        if s > ack.seq {
                            break;
                        }
                        sent.pop_front();
                        if s == ack.seq {
                            supervisor.renew_lease(at);
                        }
                    }
                }
            }
        }
    }
    .await;
    if let Err(why) = why {
        let _ = failed.send(why).await;
    }
}

/// Keeps a session with the cluster for as long as the agent runs.
pub async fn run(
    cfg: SessionConfig,
    facts: HostFacts,
    supervisor: Arc<dyn Engine>,
    mut outbox: mpsc::UnboundedReceiver<Report>,
) -> Refused {
    // Right after a session ends (a leader died, an election is on) the
    // agent retries every 25 ms, so that it is back within a few ms of the
    // new leader; after 3 s of failures it backs off to 2 s.
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_millis(25);
    let mut next = 0usize;
    let mut redirect: Option<String> = None;
    loop {
        let addr = redirect.take().unwrap_or_else(|| {
            let a = cfg.servers[next % cfg.servers.len()].clone();
            next += 1;
            a
        });
        match session(&cfg, &facts, &addr, &supervisor, &mut outbox).await {
            Ok(reason) => {
                tracing::warn!(server = %addr, "session ended: {reason}");
                failing_since = None;
                backoff = Duration::from_millis(25);
                // Straight on to the next server: this one may be gone.
                continue;
            }
            Err(SessionEnd::Redirect(leader)) => {
                tracing::info!(server = %addr, %leader, "following the leader");
                redirect = Some(leader);
                continue;
            }
            Err(SessionEnd::Failed(e)) => {
                tracing::debug!(server = %addr, "cannot open a session: {e}");
            }
            Err(SessionEnd::Refused(why)) => return Refused(why),
        }
        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
        tokio::time::sleep(backoff).await;
        if since.elapsed() > Duration::from_secs(3) {
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

enum SessionEnd {
    Redirect(String),
    Failed(String),
    /// The cluster does not take this node's certificate (revoked,
    /// expired, of another CA): retrying would not change that.
    Refused(String),
}

/// Why the agent stopped trying: the cluster refused its certificate.
#[derive(Debug, thiserror::Error)]
#[error("the cluster refused this node's certificate: {0}")]
pub struct Refused(pub String);

async fn session(
    cfg: &SessionConfig,
    facts: &HostFacts,
    addr: &str,
    supervisor: &Arc<dyn Engine>,
    outbox: &mut mpsc::UnboundedReceiver<Report>,
) -> Result<String, SessionEnd> {
    let endpoint = Link {
        endpoint: berth_proto::transport::endpoint(addr)
            .map_err(|e| SessionEnd::Failed(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
        tls: cfg.tls.clone(),
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionEnd::Failed(berth_proto::one_line(&e)))?;
    let mut client = AgentSessionClient::new(channel)
        .max_decoding_message_size(berth_proto::limits::MAX_MESSAGE)
        .max_encoding_message_size(berth_proto::limits::MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<AgentMessage>(256);
    let register = Register {
        node: cfg.node.clone(),
        kernel: facts.kernel.clone(),
        cgroup_version: facts.cgroup_version.clone(),
        cpus: facts.cpus,
        memory_bytes: facts.memory_bytes,
        images: supervisor.images().into_iter().map(wire::image).collect(),
        containers: supervisor
            .local_containers()
            .into_iter()
            .map(wire::local_copy)
            .collect(),
        labels: cfg.labels.clone(),
    };
    // The lease runs from when the registration left, once it is answered.
    let registered_at = crate::runtime::lease::now_ms();
    let _ = tx
        .send(AgentMessage {
            msg: Some(agent_message::Msg::Register(register)),
        })
        .await;
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if let Some(leader) = status.message().strip_prefix("not the leader; leader: ") {
                if !leader.is_empty() {
                    return Err(SessionEnd::Redirect(leader.to_string()));
                }
            }
            if status.code() == tonic::Code::Unauthenticated {
                return Err(SessionEnd::Refused(status.message().to_string()));
            }
            return Err(SessionEnd::Failed(format!(
                "{}: {}",
                status.code(),
                status.message()
            )));
        }
    };
    // The heartbeats go on a connection of their own once registered; if
    // they fail, the session is over.
    let (beat_failed_tx, mut beat_failed) = mpsc::channel::<String>(1);
    let mut beating: Option<AbortOnDrop> = None;
    // Open attachments: where each one's input goes.
    let mut attachments: HashMap<u64, mpsc::UnboundedSender<berth_proto::agent::AttachData>> =
        HashMap::new();
    // Image requests still receiving their upload: the operation, and the
    // upload so far (staged on disk, made with its first piece).
    let mut pending: HashMap<
        u64,
        (
            Option<image_request::Op>,
            Option<crate::image::upload::Upload>,
        ),
    > = HashMap::new();
    let mut session_id = 0u64;
    // Reads asked for before the registration was answered wait for it:
    // their answer names the session.
    let mut early_reads: Vec<berth_proto::agent::ReadLogs> = Vec::new();
    let reads = ReadChannel::new(endpoint.clone());
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok("the server closed the stream".into()),
                    Err(e) => return Ok(format!("stream error: {e}")),
                };
                match msg.msg {
                    Some(server_message::Msg::Registered(r)) => {
                        tracing::info!(node = %r.node, server = %addr, stale = r.stale.len(), "registered");
                        supervisor.renew_lease(registered_at);
                        session_id = r.session_id;
                        {
                            // The reads' connection, before the first read
                            // needs it.
                            let reads = reads.clone();
                            tokio::spawn(async move { let _ = reads.get().await; });
                        }
                        for read in early_reads.drain(..) {
                            tokio::spawn(answer_read(
                                reads.clone(),
                                cfg.node.clone(),
                                session_id,
                                wire::read_logs(read),
                                supervisor.clone(),
                            ));
                        }
                        beating = Some(AbortOnDrop(tokio::spawn(heartbeats(
                            endpoint.clone(),
                            cfg.node.clone(),
                            r.session_id,
                            cfg.heartbeat,
                            supervisor.clone(),
                            beat_failed_tx.clone(),
                        ))));
                        // Stale copies go before anything else is resumed.
                        let stale = r.stale.into_iter().filter_map(|l| match wire::stale_copy(l) {
                            Ok(l) => Some(l),
                            Err(e) => {
                                tracing::warn!("ignoring a stale copy: {e}");
                                None
                            }
                        }).collect();
                        tokio::spawn(supervisor.clone().registered(stale, r.log_next_seq, r.log_tail_lines));
                    }
                    Some(server_message::Msg::Assign(a)) => {
                        let ack = AgentMessage {
                            msg: Some(agent_message::Msg::AssignAck(berth_proto::agent::AssignAck {
                                container_id: a.container_id.clone(),
                                generation: a.generation,
                            })),
                        };
                        if tx.send(ack).await.is_err() {
                            return Ok("the outbound stream closed".into());
                        }
                        match wire::assignment(a) {
                            Ok(a) => {
                                tokio::spawn(supervisor.clone().assign(a));
                            }
                            // Acknowledged all the same: a resend would be
                            // as malformed.
                            Err(e) => tracing::warn!("refusing an assignment: {e}"),
                        }
                    }
                    Some(server_message::Msg::LogAck(a)) => {
                        let (id, ack) = wire::log_ack(a);
                        supervisor.log_ack(&id, ack);
                    }
                    Some(server_message::Msg::ReadLogs(r)) if session_id == 0 => {
                        early_reads.push(r);
                    }
                    Some(server_message::Msg::ReadLogs(r)) => {
                        tokio::spawn(answer_read(
                            reads.clone(),
                            cfg.node.clone(),
                            session_id,
                            wire::read_logs(r),
                            supervisor.clone(),
                        ));
                    }
                    Some(server_message::Msg::AttachOpen(open)) => {
                        let (in_tx, in_rx) = mpsc::unbounded_channel();
                        attachments.insert(open.stream_id, in_tx);
                        tokio::spawn(supervisor.clone().attach(open, in_rx));
                    }
                    Some(server_message::Msg::AttachInput(data)) => {
                        let id = data.stream_id;
                        let detach = data.detach;
                        if let Some(tx) = attachments.get(&id) {
                            let _ = tx.send(data);
                        }
                        if detach {
                            attachments.remove(&id);
                        }
                    }
                    Some(server_message::Msg::ImageRequest(req)) => {
                        let entry = pending.entry(req.request_id).or_insert_with(|| (None, None));
                        if req.op.is_some() {
                            entry.0 = req.op;
                        }
                        if !req.data.is_empty() {
                            entry.1.get_or_insert_with(|| supervisor.upload()).write(&req.data);
                        }
                        if req.last {
                            if let Some((Some(op), upload)) = pending.remove(&req.request_id) {
                                let upload = upload.map(|u| u.finish()).transpose();
                                tokio::spawn(supervisor.clone().image_op(req.request_id, op, upload));
                            }
                        }
                    }
                    None => {}
                }
            }
            Some(r) = outbox.recv() => {
                if tx.send(wire::report(r)).await.is_err() {
                    return Ok("the outbound stream closed".into());
                }
            }
            Some(why) = beat_failed.recv() => {
                drop(beating.take());
                return Ok(format!("heartbeats failed: {why}"));
            }
        }
    }
}

/// Answers a read of a container's log on a LogRead stream of the
/// session's read connection: HTTP/2 flow control paces the reading to
/// the reader, and the session never carries the bulk.
async fn answer_read(
    reads: ReadChannel,
    node: String,
    session_id: u64,
    req: crate::orders::ReadLogs,
    engine: Arc<dyn Engine>,
) {
    let request_id = req.request_id;
    let (pieces, pieces_rx) = mpsc::channel::<agent::LogPiece>(2);
    let upload = async {
        let channel = reads.get().await?;
        AgentSessionClient::new(channel)
            .max_encoding_message_size(berth_proto::limits::MAX_MESSAGE)
            .log_read(ReceiverStream::new(pieces_rx))
            .await
            .map(drop)
            .map_err(|s| s.message().to_string())
    };
    let reading = async {
        let first = agent::LogPiece {
            request_id,
            node,
            session_id,
            ..Default::default()
        };
        if pieces.send(first).await.is_err() {
            return;
        }
        let (batches, mut batches_rx) = mpsc::channel::<Vec<crate::orders::LogLine>>(2);
        let forward = async {
            while let Some(lines) = batches_rx.recv().await {
                let piece = agent::LogPiece {
                    request_id,
                    lines: lines.into_iter().map(wire::log_line).collect(),
                    ..Default::default()
                };
                if pieces.send(piece).await.is_err() {
                    return;
                }
            }
        };
        let (result, ()) = tokio::join!(engine.read_logs(req, batches), forward);
        let _ = pieces
            .send(agent::LogPiece {
                request_id,
                end: true,
                error: result.err().unwrap_or_default(),
                ..Default::default()
            })
            .await;
    };
    let ((), uploaded) = tokio::join!(reading, upload);
    if let Err(e) = uploaded {
        tracing::debug!(request_id, "a log read ended early: {e}");
    }
}

/// Conversions between agent.proto and the node's typed orders and reports.
mod wire {
    use std::time::Duration;

    use super::agent::{self, agent_message, Action, AgentMessage};
    use crate::image::ImageSummary;
    use crate::orders::{
        Assignment, ContainerState, LocalCopy, LogAck, LogLine, Order, ReadLogs, Report, RunSpec,
        Transition,
    };

    /// What makes a message from the server unusable.
    #[derive(Debug, thiserror::Error, PartialEq)]
    pub enum WireError {
        #[error("the assignment of {0} has no action")]
        NoAction(String),
        #[error("the run assignment of {0} has no container spec")]
        NoSpec(String),
        #[error("the stale copy {id} names an unknown state {state:?}")]
        UnknownState { id: String, state: String },
    }

    /// An assignment from the leader.
    pub fn assignment(a: agent::Assign) -> Result<Assignment, WireError> {
        let order = match a.action() {
            Action::Unspecified => return Err(WireError::NoAction(a.container_id)),
            Action::Run | Action::Create => {
                let start = a.action() == Action::Run;
                let Some(spec) = a.spec else {
                    return Err(WireError::NoSpec(a.container_id));
                };
                Order::Run {
                    spec: Box::new(run_spec(spec, a.log_first_seq)),
                    start,
                }
            }
            Action::Stop => Order::Stop {
                signal: (a.signal != 0).then_some(a.signal),
                grace: Duration::from_secs(u64::from(a.timeout_s)),
            },
            Action::Kill => Order::Kill { signal: a.signal },
            Action::Pause => Order::Pause,
            Action::Unpause => Order::Unpause,
            Action::Remove => Order::Remove,
        };
        Ok(Assignment {
            container: a.container_id,
            name: a.name,
            generation: a.generation,
            order,
        })
    }

    fn run_spec(s: agent::ContainerSpec, log_first_seq: u64) -> RunSpec {
        RunSpec {
            image: s.image,
            cmd: s.cmd,
            entrypoint: s.entrypoint_set.then_some(s.entrypoint),
            env: s.env,
            hostname: s.hostname,
            workdir: s.workdir,
            user: s.user,
            network: s.network,
            memory_bytes: (s.memory_bytes > 0).then_some(s.memory_bytes),
            nano_cpus: (s.nano_cpus > 0).then_some(s.nano_cpus),
            pids_limit: (s.pids_limit > 0).then_some(s.pids_limit),
            volumes: s.volumes,
            restart: s.restart,
            tty: s.tty,
            stdin_open: s.stdin_open,
            wait_for_attach: s.wait_for_attach,
            ulimits: s.ulimits,
            movable: s.movable,
            log_first_seq,
            security: crate::orders::Security {
                privileged: s.privileged,
                cap_add: s.cap_add,
                cap_drop: s.cap_drop,
                devices: s.devices,
                security_opt: s.security_opt,
                read_only: s.read_only,
                tmpfs: s.tmpfs,
            },
        }
    }

    /// The cluster's answer to a log batch, with the container it is for.
    pub fn log_ack(a: agent::LogAck) -> (String, LogAck) {
        (
            a.container_id,
            LogAck {
                next_seq: a.next_seq,
                chunk_first_seq: a.chunk_first_seq,
                stop: a.stop,
            },
        )
    }

    /// A read of a container's log.
    pub fn read_logs(r: agent::ReadLogs) -> ReadLogs {
        ReadLogs {
            request_id: r.request_id,
            container: r.container_id,
            from_seq: r.from_seq,
            tail: r.tail,
            follow: r.follow,
            merge: r.merge,
        }
    }

    pub fn log_line(l: LogLine) -> agent::LogLine {
        agent::LogLine {
            seq: l.seq,
            stream: l.stream,
            time_ns: l.time_ns,
            line: l.line.into(),
        }
    }

    /// A copy the leader names as stale at registration.
    pub fn stale_copy(l: agent::LocalContainer) -> Result<LocalCopy, WireError> {
        let state = match l.state.as_str() {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "exited" => ContainerState::Exited,
            _ => {
                return Err(WireError::UnknownState {
                    id: l.id,
                    state: l.state,
                })
            }
        };
        Ok(LocalCopy {
            container: l.id,
            generation: l.generation,
            state,
            exit_code: l.exit_code,
        })
    }

    /// A copy this node holds, for registration.
    pub fn local_copy(l: LocalCopy) -> agent::LocalContainer {
        agent::LocalContainer {
            id: l.container,
            generation: l.generation,
            state: l.state.name().to_string(),
            exit_code: l.exit_code,
        }
    }

    pub fn image(i: ImageSummary) -> agent::Image {
        agent::Image {
            id: i.id,
            tags: i.tags,
            size: i.size,
            created_ms: i.created_ms,
        }
    }

    fn transition(t: Transition) -> agent::Transition {
        agent::Transition {
            container_id: t.container,
            generation: t.generation,
            to: t.to.name().to_string(),
            at_ms: t.at_ms,
            exit_code: t.exit_code,
            error: t.error.unwrap_or_default(),
            image_id: t.image_id.unwrap_or_default(),
            oom_killed: t.oom_killed,
        }
    }

    /// A report of this node, for the server.
    pub fn report(r: Report) -> AgentMessage {
        let msg = match r {
            Report::Transition(t) => agent_message::Msg::Transition(transition(t)),
            Report::Logs(b) => agent_message::Msg::Logs(agent::LogChunk {
                container_id: b.container,
                generation: b.generation,
                lines: b.lines.into_iter().map(log_line).collect(),
                skip_to: b.skip_to.unwrap_or(0),
            }),
            Report::Images(images) => agent_message::Msg::Images(agent::ImageInventory {
                images: images.into_iter().map(image).collect(),
            }),
            Report::ImageReply(r) => agent_message::Msg::ImageReply(agent::ImageReply {
                request_id: r.request_id,
                data: r.data,
                last: r.last,
                error: r.error.unwrap_or_default(),
                json: r.json,
            }),
            Report::AttachOutput(o) => agent_message::Msg::AttachOutput(agent::AttachData {
                stream_id: o.stream_id,
                data: o.data,
                close: o.close,
                exit_code: o.exit_code,
                ..Default::default()
            }),
        };
        AgentMessage { msg: Some(msg) }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn assignments_convert_to_orders_and_malformed_ones_are_named() {
            let base = agent::Assign {
                container_id: "ab".into(),
                name: "web.1".into(),
                generation: 4,
                ..Default::default()
            };
            let stop = assignment(agent::Assign {
                action: Action::Stop as i32,
                timeout_s: 7,
                ..base.clone()
            })
            .unwrap();
            assert_eq!(
                stop.order,
                Order::Stop {
                    signal: None,
                    grace: Duration::from_secs(7)
                }
            );
            assert_eq!((stop.generation, stop.name.as_str()), (4, "web.1"));
            let create = assignment(agent::Assign {
                action: Action::Create as i32,
                log_first_seq: 9,
                spec: Some(agent::ContainerSpec {
                    image: "busybox".into(),
                    entrypoint_set: true,
                    memory_bytes: 0,
                    nano_cpus: 500_000_000,
                    ..Default::default()
                }),
                ..base.clone()
            })
            .unwrap();
            let Order::Run { spec, start } = create.order else {
                panic!("{create:?}");
            };
            assert!(!start);
            assert_eq!(spec.entrypoint, Some(vec![]));
            assert_eq!(
                (spec.memory_bytes, spec.nano_cpus, spec.log_first_seq),
                (None, Some(500_000_000), 9)
            );
            assert_eq!(
                assignment(agent::Assign {
                    action: Action::Run as i32,
                    ..base.clone()
                }),
                Err(WireError::NoSpec("ab".into()))
            );
            assert_eq!(assignment(base), Err(WireError::NoAction("ab".into())));
        }

        #[test]
        fn reports_convert_to_the_wire() {
            let m = report(Report::Transition(Transition {
                container: "ab".into(),
                generation: 2,
                to: ContainerState::Exited,
                at_ms: 5,
                exit_code: 3,
                error: Some("boom".into()),
                image_id: None,
                oom_killed: true,
            }));
            let Some(agent_message::Msg::Transition(t)) = m.msg else {
                panic!("{m:?}");
            };
            assert_eq!(
                (t.to.as_str(), t.exit_code, t.error.as_str(), t.oom_killed),
                ("exited", 3, "boom", true)
            );
            let copy = local_copy(LocalCopy {
                container: "ab".into(),
                generation: 3,
                state: ContainerState::Running,
                exit_code: 0,
            });
            assert_eq!(
                stale_copy(copy.clone()).unwrap().state,
                ContainerState::Running
            );
            assert!(stale_copy(agent::LocalContainer {
                state: "zombie".into(),
                ..copy
            })
            .is_err());
        }
    }
}
