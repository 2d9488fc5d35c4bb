//! Simulated nodes (`berth-agent --simulate N`): light nodes, many in one
//! process, that register with the resources given, acknowledge and carry
//! out assignments by reporting the transitions a real node would, and run
//! no process. For scale tests and benchmarks of the control plane; they
//! share the session code with the real node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_proto::agent::{self, image_request};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::image::ImageSummary;
use crate::orders::{
    Assignment, AttachOutput, ContainerState, ImageReply, LocalCopy, Order, Report, Transition,
};

/// The image every simulated node holds (`busybox:latest`).
pub const IMAGE: &str = "busybox:latest";
const IMAGE_ID: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// One simulated node.
pub struct SimNode {
    outbox: mpsc::UnboundedSender<Report>,
    /// Each container's generation and state.
    containers: Mutex<HashMap<String, (u64, ContainerState)>>,
}

impl SimNode {
    pub fn new(outbox: mpsc::UnboundedSender<Report>) -> Self {
        Self {
            outbox,
            containers: Mutex::new(HashMap::new()),
        }
    }

    fn report(&self, id: &str, generation: u64, to: ContainerState, exit_code: i32) {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), (generation, to));
        let _ = self.outbox.send(Report::Transition(Transition {
            exit_code,
            ..Transition::now(id, generation, to)
        }));
    }

    fn state(&self, id: &str) -> Option<(u64, ContainerState)> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }
}

impl Engine for SimNode {
    fn images(&self) -> Vec<ImageSummary> {
        vec![ImageSummary {
            id: IMAGE_ID.into(),
            tags: vec![IMAGE.into()],
            size: 1 << 20,
            created_ms: 0,
        }]
    }

    fn local_containers(&self) -> Vec<LocalCopy> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (generation, state))| LocalCopy {
                container: id.clone(),
                generation: *generation,
                state: *state,
                exit_code: 0,
            })
            .collect()
    }

    fn renew_lease(&self, _sent_ms: u64) {}

    fn registered(
        self: Arc<Self>,
        stale: Vec<LocalCopy>,
        _log_next_seq: HashMap<String, u64>,
        _log_tail_lines: u64,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            for l in stale {
                containers.remove(&l.container);
            }
        })
    }

    fn assign(self: Arc<Self>, a: Assignment) -> BoxFuture<'static, ()> {
        use ContainerState::*;
        Box::pin(async move {
            let id = a.container.as_str();
            let known = self.state(id);
            if known.is_some_and(|(g, _)| g > a.generation) {
                return;
            }
            let running = matches!(known, Some((_, Running | Paused)));
            match a.order {
                Order::Run { start: true, .. } if !running => {
                    if known.is_none_or(|(g, _)| g < a.generation) {
                        self.report(id, a.generation, Created, 0);
                    }
                    self.report(id, a.generation, Running, 0);
                }
                Order::Run { start: false, .. } if known.is_none() => {
                    self.report(id, a.generation, Created, 0)
                }
                Order::Stop { .. } if running => self.report(id, a.generation, Exited, 0),
                Order::Kill { signal } if running => {
                    self.report(id, a.generation, Exited, 128 + signal)
                }
                Order::Pause if running => self.report(id, a.generation, Paused, 0),
                Order::Unpause if running => self.report(id, a.generation, Running, 0),
                Order::Remove => {
                    self.containers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(id);
                }
                _ => {}
            }
        })
    }

    fn log_ack(&self, _container: &str, _ack: crate::orders::LogAck) {}

    fn read_logs(
        self: Arc<Self>,
        _req: crate::orders::ReadLogs,
        _out: mpsc::Sender<Vec<crate::orders::LogLine>>,
    ) -> BoxFuture<'static, Result<(), String>> {
        // A simulated container writes nothing.
        Box::pin(async { Ok(()) })
    }

    fn attach(
        self: Arc<Self>,
        open: agent::AttachOpen,
        _input: mpsc::UnboundedReceiver<agent::AttachData>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.outbox.send(Report::AttachOutput(AttachOutput {
                stream_id: open.stream_id,
                data: b"a simulated node runs no process\r\n".to_vec(),
                close: true,
                exit_code: None,
            }));
        })
    }

    fn upload(&self) -> crate::image::upload::Upload {
        crate::image::upload::Upload::open(&std::env::temp_dir(), &Default::default())
    }

    fn image_op(
        self: Arc<Self>,
        request_id: u64,
        op: image_request::Op,
        _upload: Result<Option<std::fs::File>, String>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (json, error) = match op {
                image_request::Op::RemoveContainer(r) => {
                    self.containers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&r.container_id);
                    (String::new(), None)
                }
                image_request::Op::Sizes(_) => ("{}".to_string(), None),
                image_request::Op::Top(_) => ("[]".to_string(), None),
                _ => (
                    String::new(),
                    Some("a simulated node has no image store".to_string()),
                ),
            };
            let _ = self.outbox.send(Report::ImageReply(ImageReply {
                request_id,
                last: true,
                error,
                json,
                data: Vec::new(),
            }));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn assign(id: &str, generation: u64, order: Order) -> Assignment {
        Assignment {
            container: id.into(),
            name: id.into(),
            generation,
            order,
        }
    }

    fn run() -> Order {
        Order::Run {
            spec: Box::default(),
            start: true,
        }
    }

    fn stop() -> Order {
        Order::Stop {
            signal: None,
            grace: Duration::from_secs(1),
        }
    }

    fn reports(rx: &mut mpsc::UnboundedReceiver<Report>) -> Vec<(ContainerState, u64)> {
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            if let Report::Transition(t) = r {
                out.push((t.to, t.generation));
            }
        }
        out
    }

    #[tokio::test]
    async fn a_simulated_node_reports_as_a_real_one_and_drops_stale_assignments() {
        use ContainerState::*;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let node = Arc::new(SimNode::new(tx));
        node.clone().assign(assign("a", 2, run())).await;
        assert_eq!(reports(&mut rx), [(Created, 2), (Running, 2)]);
        // Running already: nothing new; an older generation: dropped.
        node.clone().assign(assign("a", 2, run())).await;
        node.clone().assign(assign("a", 1, stop())).await;
        assert!(reports(&mut rx).is_empty());
        node.clone().assign(assign("a", 2, stop())).await;
        assert_eq!(reports(&mut rx), [(Exited, 2)]);
        assert_eq!(node.local_containers().len(), 1);
        node.clone()
            .registered(node.local_containers(), HashMap::new(), 0)
            .await;
        assert!(node.local_containers().is_empty());
    }
}
