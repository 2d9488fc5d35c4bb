//! Simulated nodes (`berth-agent --simulate N`): light nodes, many in one
//! process, that register with the resources given, acknowledge and carry
//! out assignments by reporting the transitions a real node would, and run
//! no process. For scale tests and benchmarks of the control plane; they
//! share the session code with the real node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_proto::agent::{
    self, agent_message, image_request, Action, AgentMessage, Assign, LocalContainer,
};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::supervisor::now_ms;

/// The image every simulated node holds (`busybox:latest`).
pub const IMAGE: &str = "busybox:latest";
const IMAGE_ID: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// One simulated node.
pub struct SimNode {
    outbox: mpsc::UnboundedSender<AgentMessage>,
    /// Each container's generation and state ("created", "running", ...).
    containers: Mutex<HashMap<String, (u64, &'static str)>>,
}

impl SimNode {
    pub fn new(outbox: mpsc::UnboundedSender<AgentMessage>) -> Self {
        Self {
            outbox,
            containers: Mutex::new(HashMap::new()),
        }
    }

    fn report(&self, id: &str, generation: u64, to: &'static str, exit_code: i32) {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), (generation, to));
        let _ = self.outbox.send(AgentMessage {
            msg: Some(agent_message::Msg::Transition(agent::Transition {
                container_id: id.to_string(),
                generation,
                to: to.to_string(),
                at_ms: now_ms(),
                exit_code,
                ..Default::default()
            })),
        });
    }

    fn state(&self, id: &str) -> Option<(u64, &'static str)> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }
}

impl Engine for SimNode {
    fn images(&self) -> Vec<agent::Image> {
        vec![agent::Image {
            id: IMAGE_ID.into(),
            tags: vec![IMAGE.into()],
            size: 1 << 20,
            created_ms: 0,
        }]
    }

    fn local_containers(&self) -> Vec<LocalContainer> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (generation, state))| LocalContainer {
                id: id.clone(),
                generation: *generation,
                state: state.to_string(),
                exit_code: 0,
            })
            .collect()
    }

    fn renew_lease(&self, _sent_ms: u64) {}

    fn registered(
        self: Arc<Self>,
        stale: Vec<LocalContainer>,
        _log_next_seq: HashMap<String, u64>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            for l in stale {
                containers.remove(&l.id);
            }
        })
    }

    fn assign(self: Arc<Self>, a: Assign) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let id = a.container_id.as_str();
            let known = self.state(id);
            if known.is_some_and(|(g, _)| g > a.generation) {
                return;
            }
            let running = matches!(known, Some((_, "running" | "paused")));
            match a.action() {
                Action::Run if !running => {
                    if known.is_none_or(|(g, _)| g < a.generation) {
                        self.report(id, a.generation, "created", 0);
                    }
                    self.report(id, a.generation, "running", 0);
                }
                Action::Create if known.is_none() => self.report(id, a.generation, "created", 0),
                Action::Stop | Action::Kill if running => {
                    let code = if a.action() == Action::Kill {
                        128 + a.signal
                    } else {
                        0
                    };
                    self.report(id, a.generation, "exited", code);
                }
                Action::Pause if running => self.report(id, a.generation, "paused", 0),
                Action::Unpause if running => self.report(id, a.generation, "running", 0),
                Action::Remove => {
                    self.containers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(id);
                }
                _ => {}
            }
        })
    }

    fn attach(
        self: Arc<Self>,
        open: agent::AttachOpen,
        _input: mpsc::UnboundedReceiver<agent::AttachData>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.outbox.send(AgentMessage {
                msg: Some(agent_message::Msg::AttachOutput(agent::AttachData {
                    stream_id: open.stream_id,
                    data: b"a simulated node runs no process\r\n".to_vec(),
                    close: true,
                    ..Default::default()
                })),
            });
        })
    }

    fn image_op(
        self: Arc<Self>,
        request_id: u64,
        op: image_request::Op,
        _data: Vec<u8>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (json, error) = match op {
                image_request::Op::RemoveContainer(r) => {
                    self.containers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&r.container_id);
                    (String::new(), String::new())
                }
                image_request::Op::Sizes(_) => ("{}".to_string(), String::new()),
                image_request::Op::Top(_) => ("[]".to_string(), String::new()),
                _ => (
                    String::new(),
                    "a simulated node has no image store".to_string(),
                ),
            };
            let _ = self.outbox.send(AgentMessage {
                msg: Some(agent_message::Msg::ImageReply(agent::ImageReply {
                    request_id,
                    last: true,
                    error,
                    json,
                    ..Default::default()
                })),
            });
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(id: &str, generation: u64, action: Action) -> Assign {
        Assign {
            container_id: id.into(),
            generation,
            action: action as i32,
            ..Default::default()
        }
    }

    fn reports(rx: &mut mpsc::UnboundedReceiver<AgentMessage>) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(agent_message::Msg::Transition(t)) = m.msg {
                out.push((t.to, t.generation));
            }
        }
        out
    }

    #[tokio::test]
    async fn a_simulated_node_reports_as_a_real_one_and_drops_stale_assignments() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let node = Arc::new(SimNode::new(tx));
        node.clone().assign(assign("a", 2, Action::Run)).await;
        assert_eq!(
            reports(&mut rx),
            [("created".to_string(), 2), ("running".to_string(), 2)]
        );
        // Running already: nothing new; an older generation: dropped.
        node.clone().assign(assign("a", 2, Action::Run)).await;
        node.clone().assign(assign("a", 1, Action::Stop)).await;
        assert!(reports(&mut rx).is_empty());
        node.clone().assign(assign("a", 2, Action::Stop)).await;
        assert_eq!(reports(&mut rx), [("exited".to_string(), 2)]);
        assert_eq!(node.local_containers().len(), 1);
        node.clone()
            .registered(node.local_containers(), HashMap::new())
            .await;
        assert!(node.local_containers().is_empty());
    }
}
