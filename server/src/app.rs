//! The server's shared core: the Raft handle, the state reader and the
//! agent sessions, with the one function every write goes through.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::records::{self, command::Op, CommandResult, SCHEMA_VERSION};

use tokio::sync::{mpsc, oneshot, Semaphore};

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
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// The replicated tail of each container's log: at least this many
    /// lines or this many bytes, whichever is reached first.
    pub log_tail: LogTail,
}

/// How much of each container's log the cluster keeps (`--log-tail-*`).
#[derive(Debug, Clone, Copy)]
pub struct LogTail {
    pub lines: u64,
    pub bytes: u64,
}

impl Default for LogTail {
    fn default() -> Self {
        Self {
            lines: 10_000,
            bytes: 1 << 20,
        }
    }
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
    /// A command with an absurd value, refused before it was proposed.
    #[error(transparent)]
    Invalid(#[from] crate::state::validate::Invalid),
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
    pub scheduler: Arc<crate::scheduler::Scheduler>,
    pub config: AppConfig,
    /// The server's TLS, once loaded: what its own connections present
    /// (a CA rotation probes the other servers with it).
    pub tls: Arc<std::sync::OnceLock<Arc<crate::tls::ServerTls>>>,
    /// The last [`App::ca_view`], and when it was read.
    ca_view: Arc<std::sync::Mutex<Option<(std::time::Instant, CaView)>>>,
    writes: mpsc::UnboundedSender<PendingWrite>,
}

/// What every heartbeat answer and cluster status says of the CA.
#[derive(Debug, Clone, Default)]
pub struct CaView {
    /// The digest of the CA members should hold a certificate of.
    pub renew_to: String,
    /// A rotation is under way.
    pub rotating: bool,
}

/// How long a [`CaView`] is used before the state is read again: a
/// rotation reaches agents and CLIs that much later at most.
const CA_VIEW_FOR: Duration = Duration::from_secs(1);

/// A write waiting for its turn in a Raft entry, and who waits for it.
type PendingWrite = (Op, oneshot::Sender<Result<CommandResult, AppError>>);

/// How long a call waits for an election to end when no leader is known.
const ELECTION_WAIT: Duration = Duration::from_secs(3);

/// The most commands of one [`App::write_all`] entry: a placement is about
/// 100 bytes and a new task about 600, so that an entry (and an
/// AppendEntries of up to 64 of them, raft/mod.rs) stays under the gRPC
/// message limit of 4 MiB. (Entries of 256 new tasks outgrew it: followers
/// refused the AppendEntries and nothing committed.)
const BULK_MAX: usize = 64;

/// How many entries of one bulk write are in flight at once.
const BULK_IN_FLIGHT: usize = 4;

/// The most commands one Raft entry carries.
const BATCH_MAX: usize = 64;
/// How many batched entries may be in flight at once. While they are,
/// new writes queue and go together in the next entry: one entry (one
/// append, one apply, one rocksdb batch) for many writes is what lets
/// throughput grow with clients. A lone write never waits: it goes at
/// once, as its own entry.
const BATCHES_IN_FLIGHT: usize = 2;

use berth_proto::limits::MAX_ENTRY;

impl App {
    /// Makes the core and starts its write batcher (call within tokio).
    pub fn new(raft: BerthRaft, state: StateReader, config: AppConfig) -> Self {
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(batch_writes(raft.clone(), queue));
        Self {
            raft,
            state,
            nodes: Arc::new(Nodes::default()),
            scheduler: Arc::new(crate::scheduler::Scheduler::new(config.scheduler.clone())),
            config,
            tls: Arc::default(),
            ca_view: Arc::default(),
            writes,
        }
    }

    /// Commits one command through Raft and returns what applying it gave.
    /// The caller hears "ok" only after the commit (invariant 1); a command
    /// the state machine refused comes back as [`AppError::Refused`].
    /// Concurrent writes may share an entry; each still gets its own
    /// result, and applies as if alone, in the order they were queued.
    pub async fn write(&self, op: Op) -> Result<CommandResult, AppError> {
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        self.while_electing(deadline, || self.write_once(op.clone()))
            .await
    }

    /// Commits many commands in few entries (up to [`BULK_MAX`] each, as
    /// batches), for the reconciler's placements; each gets its result, in
    /// order, as if written alone.
    pub async fn write_all(&self, ops: Vec<Op>) -> Vec<Result<CommandResult, AppError>> {
        // An invalid command gets its refusal in its place; the others go.
        let mut results: Vec<Option<Result<CommandResult, AppError>>> = Vec::new();
        let mut valid = Vec::new();
        let mut slicer = crate::stall::Slicer::new();
        for op in ops {
            // Thousands of commands (a service's new tasks) are checked
            // in slices, the runtime's other tasks in between.
            slicer.step().await;
            match crate::state::validate::check(&op) {
                Ok(()) => {
                    results.push(None);
                    valid.push(op);
                }
                Err(e) => results.push(Some(Err(e.into()))),
            }
        }
        let mut chunks = Vec::new();
        let mut ops = valid.into_iter().peekable();
        while ops.peek().is_some() {
            chunks.push(ops.by_ref().take(BULK_MAX).collect::<Vec<Op>>());
        }
        // A few entries in flight at a time, in order: all of a 20,000-task
        // service at once was 313 entries (20 MB) that the leader wrote,
        // sent and applied, and each follower took in and applied, in
        // steps too long for heartbeats to pass between them.
        use futures::StreamExt;
        let mut committed = futures::stream::iter(chunks)
            .map(|chunk| commit(&self.raft, chunk))
            .buffered(BULK_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .map(|r| r.and_then(refusal));
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    committed
                        .next()
                        .unwrap_or_else(|| Err(AppError::Raft("a batch result is missing".into())))
                })
            })
            .collect()
    }

    /// Runs `once` again while this server finds no established leader:
    /// an election is on, or this server has only just taken up its
    /// leadership again after a restart (openraft refuses it writes and
    /// reads until it is established). Until `deadline`; if another member
    /// wins, the caller is told (DESIGN.md: a leader change is latency).
    async fn while_electing<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        mut once: F,
    ) -> Result<T, AppError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AppError>>,
    {
        loop {
            match once().await {
                Err(AppError::NotLeader(None)) if tokio::time::Instant::now() < deadline => {
                    if !self.await_leader().await {
                        return Err(AppError::NotLeader(None));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => return r,
            }
        }
    }

    /// Waits (up to [`ELECTION_WAIT`]) until some member leads; true if
    /// it is this one.
    async fn await_leader(&self) -> bool {
        let waited = self
            .raft
            .wait(Some(ELECTION_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        waited.is_ok_and(|m| m.current_leader == Some(m.id))
    }

    async fn write_once(&self, op: Op) -> Result<CommandResult, AppError> {
        crate::state::validate::check(&op)?;
        let size = op.encoded_len();
        if size > MAX_ENTRY {
            return Err(AppError::Refused(format!(
                "the change is {size} bytes, more than the {MAX_ENTRY} one Raft entry may carry"
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((op, tx))
            .map_err(|_| AppError::Raft("the server is shutting down".into()))?;
        let result = rx
            .await
            .map_err(|_| AppError::Raft("the server is shutting down".into()))??;
        refusal(result)
    }

    /// Waits until this server's state is current with the leader's commit
    /// (a read index), so that a read after it sees every acknowledged write.
    pub async fn linearize(&self) -> Result<(), AppError> {
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        self.while_electing(deadline, || self.linearize_once(deadline))
            .await
    }

    /// A read index; a quorum that did not answer this round (a follower
    /// busy for a moment) is asked again until `deadline`, as a write
    /// waits for an election: it is latency, not an error.
    async fn linearize_once(&self, deadline: tokio::time::Instant) -> Result<(), AppError> {
        loop {
            match self
                .raft
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
            {
                Ok(_) => return Ok(()),
                Err(openraft::error::RaftError::APIError(
                    openraft::error::LinearizableReadError::ForwardToLeader(f),
                )) => return Err(AppError::NotLeader(f.leader_node.map(|n| n.addr))),
                Err(openraft::error::RaftError::APIError(
                    openraft::error::LinearizableReadError::QuorumNotEnough(q),
                )) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("a read index found no quorum this round: {q}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(AppError::Raft(e.to_string())),
            }
        }
    }
}

impl App {
    /// Every container, read and decoded on the blocking pool: with tens
    /// of thousands of them, doing it on the server's one thread would hold
    /// Raft's heartbeats and votes for as long.
    pub async fn containers(&self) -> Result<Vec<records::Container>, AppError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.containers())
            .await
            .map_err(|e| AppError::Raft(format!("reading the containers: {e}")))?
            .map_err(AppError::from)
    }

    /// True if this server believes it leads (no round trip: for checks
    /// that run often).
    /// The CA as heartbeat answers and the cluster status name it: read
    /// from the state at most once a second (not once per heartbeat of
    /// every node: a read and a digest each).
    pub fn ca_view(&self) -> CaView {
        let mut cached = self.ca_view.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, view)) = cached.as_ref() {
            if at.elapsed() < CA_VIEW_FOR {
                return view.clone();
            }
        }
        let view = match self.state.pki() {
            Ok(Some(p)) => CaView {
                renew_to: crate::pki::renew_to(&p),
                rotating: !p.previous_ca_cert_pem.is_empty(),
            },
            _ => CaView::default(),
        };
        *cached = Some((std::time::Instant::now(), view.clone()));
        view
    }

    /// The Raft address of the member whose id is `id` (decimal), if
    /// the membership holds it.
    pub fn raft_addr_of(&self, id: &str) -> Option<String> {
        let id: u64 = id.parse().ok()?;
        let m = crate::raft::metrics(&self.raft);
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some(addr)
    }

    pub fn is_leader(&self) -> bool {
        use openraft::async_runtime::WatchReceiver;
        // Read in place: a copy of the metrics copies the membership.
        let watch = self.raft.metrics();
        let m = watch.borrow_watched();
        m.current_leader == Some(m.id)
    }

    /// True if this server leads and a majority confirms it now (a read
    /// index within a second): a leader cut off from the others is not.
    pub async fn is_effective_leader(&self) -> bool {
        let m = crate::raft::metrics(&self.raft);
        if m.current_leader != Some(m.id) {
            return false;
        }
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                self.raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

/// Takes queued writes and commits them, as many as are waiting (up to
/// [`BATCH_MAX`]) in one entry, with at most [`BATCHES_IN_FLIGHT`] entries
/// in flight.
async fn batch_writes(raft: BerthRaft, mut queue: mpsc::UnboundedReceiver<PendingWrite>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    // A write that did not fit in the last entry starts the next one.
    let mut carried: Option<PendingWrite> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match queue.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while the slot was taken goes along, up to
        // BATCH_MAX commands and MAX_ENTRY bytes.
        let mut size = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(w) => {
                    let more = w.0.encoded_len() + 8;
                    if size + more > MAX_ENTRY {
                        carried = Some(w);
                        break;
                    }
                    size += more;
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

async fn commit_batch(raft: &BerthRaft, batch: Vec<PendingWrite>) {
    let (ops, waiters): (Vec<Op>, Vec<_>) = batch.into_iter().unzip();
    for (w, r) in waiters.into_iter().zip(commit(raft, ops).await) {
        let _ = w.send(r);
    }
}

/// Commits `ops` as one entry (a batch when there are several) and returns
/// each one's result, in order; a refusal is a result with its error set.
async fn commit(raft: &BerthRaft, ops: Vec<Op>) -> Vec<Result<CommandResult, AppError>> {
    let n = ops.len();
    let op = if n == 1 {
        ops.into_iter().next().expect("one op")
    } else {
        Op::Batch(records::Batch {
            commands: ops
                .into_iter()
                .map(|op| records::Command {
                    schema: SCHEMA_VERSION,
                    op: Some(op),
                })
                .collect(),
        })
    };
    let batched = matches!(op, Op::Batch(_));
    let cmd = records::Command {
        schema: SCHEMA_VERSION,
        op: Some(op),
    };
    match raft.client_write(Request(cmd)).await {
        Ok(resp) if batched => {
            let mut results = resp.data.0.batch.into_iter();
            (0..n)
                .map(|_| {
                    results
                        .next()
                        .ok_or_else(|| AppError::Raft("a batch result is missing".into()))
                })
                .collect()
        }
        Ok(resp) => vec![Ok(resp.data.0)],
        Err(e) => {
            let err = || match &e {
                openraft::error::RaftError::APIError(
                    openraft::error::ClientWriteError::ForwardToLeader(f),
                ) => AppError::NotLeader(f.leader_node.clone().map(|n| n.addr)),
                e => AppError::Raft(e.to_string()),
            };
            (0..n).map(|_| Err(err())).collect()
        }
    }
}

/// A result the state machine refused as [`AppError::Refused`].
fn refusal(result: CommandResult) -> Result<CommandResult, AppError> {
    if result.error.is_empty() {
        Ok(result)
    } else {
        Err(AppError::Refused(result.error))
    }
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
