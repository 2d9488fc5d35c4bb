//! `berth logs` (and the output of an attached `berth run`): a container's
//! lines in order, each once. While the container's node is connected its
//! agent's log file is the full record, read through the agent on a stream
//! of its own (not through Raft); otherwise, or if that read fails, the
//! cluster's replicated tail. Every line carries its sequence number, so
//! the two sources join without a gap or a duplicate, and a client that
//! lost its stream asks again from the line after its last.

use std::time::Duration;

use berth_proto::agent::{LogLine, ReadLogs};
use berth_proto::cluster::{LogEntries, LogEntry, LogsRequest};
use tokio::sync::mpsc;
use tonic::Status;

use berth_proto::records::NodeStatus;

use crate::app::App;
use crate::state::status::Status as CStatus;

/// How long after a failed read through the agent the next one is tried.
const AGENT_RETRY: Duration = Duration::from_secs(1);
/// How long a node has to begin answering a read.
const AGENT_ANSWER: Duration = Duration::from_secs(10);
/// How long a read that needs lines only a node has waits for that node to
/// come back: an agent that restarts is back within it. A node Down for
/// longer than this is not waited for.
const NODE_RETURN: Duration = Duration::from_secs(5);

/// Streams the container's lines that `req` asks for into `tx`.
pub async fn stream(
    app: App,
    id: String,
    req: LogsRequest,
    tx: mpsc::Sender<Result<LogEntries, Status>>,
) {
    let mut out = Out {
        tx,
        next: req.from_seq.unwrap_or(1).max(1),
        since: req.since_ns,
        until: req.until_ns,
    };
    let mut tail = req.tail;
    let mut changes = app.state.subscribe();
    let mut agent_failed: Option<tokio::time::Instant> = None;
    let mut node_wait: Option<tokio::time::Instant> = None;
    loop {
        changes.borrow_and_update();
        // Agents hold their sessions with the leader only: a server that
        // no longer leads sends the client on, to ask the leader from
        // where it stands.
        if !app.is_leader() {
            return out
                .fail(Status::unavailable(
                    "this server no longer leads; ask the leader from the last line read",
                ))
                .await;
        }
        let now = match app.state.container(&id) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => return out.fail(Status::internal(e.to_string())).await,
        };
        let agent_ok = agent_failed.is_none_or(|t| t.elapsed() >= AGENT_RETRY);
        if agent_ok && !now.node.is_empty() && app.nodes.is_connected(&now.node).await {
            let read = ReadLogs {
                request_id: 0,
                container_id: id.clone(),
                from_seq: out.next,
                tail,
                follow: req.follow,
                // A time window is applied here, line by line.
                merge: req.merge_lines && req.since_ns.is_none() && req.until_ns.is_none(),
            };
            match app.nodes.read_logs(&now.node, read).await {
                Ok(mut rx) => {
                    let mut begun = false;
                    let ended = loop {
                        let event = if begun {
                            rx.recv().await
                        } else {
                            match tokio::time::timeout(AGENT_ANSWER, rx.recv()).await {
                                Ok(e) => e,
                                Err(_) => {
                                    tracing::debug!(%id, "{} did not begin a log read", now.node);
                                    break false;
                                }
                            }
                        };
                        begun = true;
                        match event {
                            Some(Ok(Some(lines))) => {
                                tail = None;
                                if !out.send(lines).await {
                                    return;
                                }
                            }
                            Some(Ok(None)) => break true,
                            Some(Err(e)) => {
                                tracing::debug!(%id, "a log read through {} failed: {e}", now.node);
                                break false;
                            }
                            None => break false,
                        }
                    };
                    if ended {
                        tracing::debug!(%id, next = out.next, "a log read through {} ended", now.node);
                        return;
                    }
                    agent_failed = Some(tokio::time::Instant::now());
                    continue;
                }
                Err(_) => agent_failed = Some(tokio::time::Instant::now()),
            }
        }
        // The cluster's tail: from where the client is, or from its oldest
        // line if the ones before were trimmed.
        if let Some(n) = tail.take() {
            out.next = out.next.max(now.log_next_seq.saturating_sub(n).max(1));
        }
        // Lines older than the cluster's tail are only in the node's file:
        // a follower waits for the node to come back while the container
        // may still (it is not over), rather than skip them.
        let first_kept = now
            .log_chunks
            .first()
            .map_or(now.log_next_seq, |m| m.first_seq);
        if out.next < first_kept {
            let finished = CStatus(now.state()).is_finished();
            let deadline =
                *node_wait.get_or_insert_with(|| tokio::time::Instant::now() + NODE_RETURN);
            let node_expected = !now.node.is_empty()
                && match app.state.node(&now.node) {
                    Ok(Some(n)) => {
                        n.status() == NodeStatus::Ready
                            || crate::app::now_ms() - n.updated_at_ms
                                < NODE_RETURN.as_millis() as i64
                    }
                    _ => false,
                };
            // A follower of a container that may still write waits for as
            // long as it takes; any other read, for a node that may be
            // coming back (ready, or down only a moment), for a while.
            if (req.follow && !finished)
                || (node_expected && tokio::time::Instant::now() < deadline)
            {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = out.tx.closed() => return,
                }
                continue;
            }
            let notice = format!(
                "lines {} to {} of {} are only in the log file on node {}, which is not connected; the cluster's copy follows",
                out.next,
                first_kept - 1,
                now.name,
                if now.node.is_empty() { "(none)" } else { &now.node },
            );
            if !out.notice(notice).await {
                return;
            }
            out.next = first_kept;
        }
        let lines = match app.state.log_lines(&id, out.next, 512) {
            Ok(l) => l,
            Err(e) => return out.fail(Status::internal(e.to_string())).await,
        };
        if !lines.is_empty() {
            if !out
                .send(
                    lines
                        .into_iter()
                        .map(super::convert::log_from_record)
                        .collect(),
                )
                .await
            {
                return;
            }
            continue;
        }
        if !req.follow {
            return;
        }
        // A finished container whose every line the cluster holds has no
        // more to come.
        if CStatus(now.state()).is_finished() && out.next >= now.log_next_seq {
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(AGENT_RETRY) => {}
            _ = out.tx.closed() => return,
        }
    }
}

/// The client's stream, where it stands, and its time window.
struct Out {
    tx: mpsc::Sender<Result<LogEntries, Status>>,
    next: u64,
    since: Option<i64>,
    until: Option<i64>,
}

impl Out {
    /// Sends the lines the client has not had, in order, as one message;
    /// false once the client is gone.
    async fn send(&mut self, lines: Vec<LogLine>) -> bool {
        let mut entries = Vec::with_capacity(lines.len());
        for l in lines {
            if l.seq < self.next {
                continue;
            }
            self.next = l.seq + 1;
            if self.since.is_some_and(|s| l.time_ns < s)
                || self.until.is_some_and(|u| l.time_ns > u)
            {
                continue;
            }
            entries.push(LogEntry {
                seq: l.seq,
                stream: l.stream,
                time_ns: l.time_ns,
                line: l.line,
            });
        }
        entries.is_empty()
            || self
                .tx
                .send(Ok(LogEntries {
                    entries,
                    notice: String::new(),
                }))
                .await
                .is_ok()
    }

    /// Tells the client why lines are left out; false once it is gone.
    async fn notice(&self, notice: String) -> bool {
        self.tx
            .send(Ok(LogEntries {
                entries: Vec::new(),
                notice,
            }))
            .await
            .is_ok()
    }

    async fn fail(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }
}
