//! What the session asks of a node: the real one (the supervisor, which
//! runs containers) or a simulated one (simulate.rs, for scale tests and
//! benchmarks). The session code is the same for both. Assignments and
//! what the node holds are the typed values of orders.rs; attachments and
//! image operations keep their wire form, which the engine relays as is.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::agent::{self, image_request};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::image::ImageSummary;
use crate::orders::{Assignment, LocalCopy, LogAck, LogLine, ReadLogs};

/// A node the session registers and drives.
pub trait Engine: Send + Sync + 'static {
    /// The images the node holds, for registration.
    fn images(&self) -> Vec<ImageSummary>;
    /// Every container the node holds, for registration.
    fn local_containers(&self) -> Vec<LocalCopy>;
    /// Extends the lease on movable containers to `sent_ms` (CLOCK_MONOTONIC,
    /// when the answered heartbeat left) plus its duration.
    fn renew_lease(&self, sent_ms: u64);
    /// After a registration: removes the stale copies first, then resends
    /// the log lines the cluster lacks and follows what runs.
    fn registered(
        self: Arc<Self>,
        stale: Vec<LocalCopy>,
        log_next_seq: HashMap<String, u64>,
        log_tail_lines: u64,
    ) -> BoxFuture<'static, ()>;
    /// Acts on an assignment.
    fn assign(self: Arc<Self>, a: Assignment) -> BoxFuture<'static, ()>;
    /// Hands the cluster's answer to a log batch to the container's shipper.
    fn log_ack(&self, container: &str, ack: LogAck);
    /// Answers a read of a container's log, batch by batch, into `out`.
    fn read_logs(
        self: Arc<Self>,
        req: ReadLogs,
        out: mpsc::Sender<Vec<LogLine>>,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// Relays an attachment until either side ends.
    fn attach(
        self: Arc<Self>,
        open: agent::AttachOpen,
        input: mpsc::UnboundedReceiver<agent::AttachData>,
    ) -> BoxFuture<'static, ()>;
    /// A new upload (import, load) to stage the pieces of a request in.
    fn upload(&self) -> crate::image::upload::Upload;
    /// Carries out an image operation and answers it; `upload` is what the
    /// request uploaded (nothing for most), or why it could not be taken.
    fn image_op(
        self: Arc<Self>,
        request_id: u64,
        op: image_request::Op,
        upload: Result<Option<std::fs::File>, String>,
    ) -> BoxFuture<'static, ()>;
}

impl Engine for crate::supervisor::Supervisor {
    fn images(&self) -> Vec<ImageSummary> {
        crate::supervisor::Supervisor::images(self)
    }

    fn local_containers(&self) -> Vec<LocalCopy> {
        crate::supervisor::Supervisor::local_containers(self)
    }

    fn renew_lease(&self, sent_ms: u64) {
        self.lease.renew_from(sent_ms);
    }

    fn registered(
        self: Arc<Self>,
        stale: Vec<LocalCopy>,
        log_next_seq: HashMap<String, u64>,
        log_tail_lines: u64,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.set_log_tail(log_tail_lines);
            self.remove_stale(stale).await;
            self.resume(log_next_seq).await;
        })
    }

    fn assign(self: Arc<Self>, a: Assignment) -> BoxFuture<'static, ()> {
        Box::pin(crate::supervisor::Supervisor::assign(self, a))
    }

    fn log_ack(&self, container: &str, ack: LogAck) {
        crate::supervisor::Supervisor::log_ack(self, container, ack)
    }

    fn read_logs(
        self: Arc<Self>,
        req: ReadLogs,
        out: mpsc::Sender<Vec<LogLine>>,
    ) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move { crate::supervisor::Supervisor::read_logs(&self, req, out).await })
    }

    fn attach(
        self: Arc<Self>,
        open: agent::AttachOpen,
        input: mpsc::UnboundedReceiver<agent::AttachData>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(crate::supervisor::Supervisor::attach(self, open, input))
    }

    fn upload(&self) -> crate::image::upload::Upload {
        crate::supervisor::Supervisor::upload(self)
    }

    fn image_op(
        self: Arc<Self>,
        request_id: u64,
        op: image_request::Op,
        upload: Result<Option<std::fs::File>, String>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(crate::supervisor::Supervisor::image_op(
            self, request_id, op, upload,
        ))
    }
}
