//! What the cluster asks of a node and what the node reports back, as typed
//! values. The supervisor and the simulated node speak only these; the
//! session (session.rs) is the one place that converts them to and from
//! agent.proto.

use std::time::Duration;

use crate::image::ImageSummary;

/// One assignment from the leader: an order about one container, at the
/// generation of the placement it belongs to (invariant 3).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub container: String,
    /// The container's name, recorded in its bundle.
    pub name: String,
    pub generation: u64,
    pub order: Order,
}

/// What the node is to do with the container.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    /// Create the container if this node does not hold it, and with
    /// `start` start it (again, if it has exited).
    Run {
        spec: Box<RunSpec>,
        start: bool,
    },
    /// Send `signal` (the image's stop signal if none), then SIGKILL once
    /// `grace` is over.
    Stop {
        signal: Option<i32>,
        grace: Duration,
    },
    /// Send `signal` now.
    Kill {
        signal: i32,
    },
    /// Freeze every process of the container.
    Pause,
    Unpause,
    /// Kill the container if it runs and delete everything the node holds
    /// of it.
    Remove,
}

/// How to run a container: the cluster's spec, as the node needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSpec {
    pub image: String,
    /// The command; empty means the image's.
    pub cmd: Vec<String>,
    /// The entrypoint; `None` means the image's (`Some(vec![])` clears it).
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub hostname: String,
    pub workdir: String,
    pub user: String,
    /// The network mode (none, host, bridge).
    pub network: String,
    pub memory_bytes: Option<u64>,
    pub nano_cpus: Option<u64>,
    pub pids_limit: Option<i64>,
    /// `-v` volumes, SOURCE:DEST[:ro].
    pub volumes: Vec<String>,
    /// The restart policy (no, always, unless-stopped, on-failure[:N]).
    pub restart: String,
    pub tty: bool,
    pub stdin_open: bool,
    /// Hold the process until the first attachment (run -it).
    pub wait_for_attach: bool,
    /// Resource limits, NAME=SOFT[:HARD].
    pub ulimits: Vec<String>,
    /// The cluster may move the container elsewhere: its shim stops it
    /// when the agent's lease runs out.
    pub movable: bool,
    /// The sequence number the first log line takes when the node creates
    /// the container afresh (the cluster's log goes on across placements).
    pub log_first_seq: u64,
    /// Capabilities, devices and security options.
    pub security: Security,
}

/// A container's isolation as `run` gave it, checked by the server
/// (berth_proto::security spells each field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub privileged: bool,
    /// Kernel spelling (`CAP_NET_ADMIN`) or `ALL`.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `HOST[:CONTAINER][:rwm]`.
    pub devices: Vec<String>,
    /// `seccomp=unconfined`, `seccomp=<JSON>`, `no-new-privileges[=BOOL]`.
    pub security_opt: Vec<String>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--tmpfs PATH[:OPTIONS]`.
    pub tmpfs: Vec<String>,
}

/// The states a node reports a container in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Exited,
}

impl ContainerState {
    /// The state's name on the wire and in the cluster's records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Exited => "exited",
        }
    }
}

/// A container changed state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub container: String,
    pub generation: u64,
    pub to: ContainerState,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub exit_code: i32,
    /// Why the container never ran or ended abnormally, if it did.
    pub error: Option<String>,
    /// The image the container was created from (on creation).
    pub image_id: Option<String>,
    pub oom_killed: bool,
}

impl Transition {
    /// A change of `container` (copy `generation`) to `to`, now, with
    /// nothing else to say.
    pub fn now(container: &str, generation: u64, to: ContainerState) -> Self {
        Self {
            container: container.to_string(),
            generation,
            to,
            at_ms: crate::supervisor::now_ms(),
            exit_code: 0,
            error: None,
            image_id: None,
            oom_killed: false,
        }
    }
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Counts from 1 with no gaps, across the container's placements.
    pub seq: u64,
    /// "stdout" or "stderr".
    pub stream: String,
    pub time_ns: i64,
    pub line: Vec<u8>,
}

/// Output lines of one container, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct LogBatch {
    pub container: String,
    pub generation: u64,
    pub lines: Vec<LogLine>,
    /// Set when the lines skip a backlog longer than the cluster keeps:
    /// they start here, and the ones before stay in the node's file only.
    pub skip_to: Option<u64>,
}

/// A container the node holds on disk: what it registers with, and what
/// the leader names back as stale.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCopy {
    pub container: String,
    pub generation: u64,
    pub state: ContainerState,
    pub exit_code: i32,
}

/// A piece of the answer to an image operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageReply {
    pub request_id: u64,
    /// A piece of a download (save, export).
    pub data: Vec<u8>,
    /// True on the reply's last piece.
    pub last: bool,
    /// On the last piece, if the operation failed.
    pub error: Option<String>,
    /// The result as JSON, on the last piece.
    pub json: String,
}

/// Output of an attachment or exec, towards the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttachOutput {
    pub stream_id: u64,
    pub data: Vec<u8>,
    /// The attachment is over.
    pub close: bool,
    /// An exec's exit code, as it closes.
    pub exit_code: Option<i32>,
}

/// What a node tells the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Transition(Transition),
    Logs(LogBatch),
    /// The node's images changed.
    Images(Vec<ImageSummary>),
    ImageReply(ImageReply),
    AttachOutput(AttachOutput),
}

/// The cluster's answer to one batch of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAck {
    /// Every line before this one is committed: ship from here.
    pub next_seq: u64,
    /// The first sequence number of the batch answered.
    pub chunk_first_seq: u64,
    /// The cluster takes no more lines of this copy.
    pub stop: bool,
}

/// A read of a container's log from this node's own file.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadLogs {
    pub request_id: u64,
    pub container: String,
    pub from_seq: u64,
    /// Only the last N lines (of those from `from_seq` on).
    pub tail: Option<u64>,
    /// Until the container has ended and every line is read.
    pub follow: bool,
    /// Consecutive lines of one stream may go as one (numbered and
    /// stamped as the last): the reader prints nothing per line.
    pub merge: bool,
}
