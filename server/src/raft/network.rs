//! The tonic transport between Raft members: openraft's requests travel
//! serialized with serde inside raft.proto's `RaftPayload` (bincode, marked
//! by a leading format byte; JSON from older members is still read), and
//! each side of the RPC lives here (the client in [`Network`], the server
//! in [`RaftService`]).

use berth_proto::raft::raft_client::RaftClient;
use berth_proto::raft::raft_server::Raft as RaftRpc;
use berth_proto::raft::{RaftPayload, SnapshotPiece};
use prost::Message as _;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::Fatal;
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tonic::transport::Channel;

use super::{BerthRaft, SnapshotMeta, TypeConfig, Vote};

/// Makes one [`Network`] per peer.
#[derive(Clone)]
pub struct NetworkFactory {
    faults: super::faults::Faults,
    tls: Arc<crate::tls::ServerTls>,
}

impl NetworkFactory {
    /// Connections to peers over TLS with this server's certificate.
    pub fn new(faults: super::faults::Faults, tls: Arc<crate::tls::ServerTls>) -> Self {
        Self { faults, tls }
    }
}

/// The connection to one peer; the channel connects lazily and reconnects
/// by itself.
pub struct Network {
    target: u64,
    node: BasicNode,
    client: Option<RaftClient<Channel>>,
    faults: super::faults::Faults,
    tls: Arc<crate::tls::ServerTls>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Network {
        Network {
            target,
            node: node.clone(),
            client: None,
            faults: self.faults.clone(),
            tls: self.tls.clone(),
        }
    }
}

/// The first piece of a streamed snapshot: what the data is.
#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    vote: Vote,
    meta: SnapshotMeta,
    snapshot_id: String,
}

/// A whole snapshot as an older member sent it, in one InstallSnapshot
/// call (records.proto `Snapshot` bytes); still taken.
#[derive(Serialize, Deserialize)]
struct FullSnapshot {
    vote: Vote,
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes_compat")]
    data: Vec<u8>,
}

/// Bytes as bytes (bincode), not as a sequence of numbers.
mod serde_bytes_compat {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::super::serde_bytes_vec(d)
    }
}

/// What a message the fault layer drops is told.
const PARTITIONED: &str = "partitioned by the fault layer";

fn partitioned() -> Unreachable<TypeConfig> {
    Unreachable::new(&StatusError(tonic::Status::unavailable(PARTITIONED)))
}

/// How long a replication stream may take to open.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Why one call failed, before it becomes the error type openraft expects
/// of that call. A peer answers an error only when its Raft core has
/// stopped (openraft's `Fatal`); that counts as a network fault, and the
/// leader backs off.
enum CallError {
    Unreachable(Unreachable<TypeConfig>),
    Network(NetworkError<TypeConfig>),
    /// The peer does not serve this RPC: an older member, during a rolling
    /// upgrade.
    Unimplemented(Unreachable<TypeConfig>),
}

impl From<CallError> for RPCError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(u) | CallError::Unimplemented(u) => RPCError::Unreachable(u),
            CallError::Network(n) => RPCError::Network(n),
        }
    }
}

impl From<CallError> for StreamingError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(u) | CallError::Unimplemented(u) => {
                StreamingError::Unreachable(u)
            }
            CallError::Network(n) => StreamingError::Network(n),
        }
    }
}

impl Network {
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        // Keepalives find a peer that stopped answering (a stopped process,
        // a half-open connection): the replication stream has no deadline
        // of its own, so without them it would wait forever.
        let endpoint = berth_proto::transport::endpoint(&self.node.addr)
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true);
        let connector = berth_proto::transport::Connector::new(self.tls.client())
            .keepalive(Duration::from_secs(1));
        let c = RaftClient::new(endpoint.connect_with_connector_lazy(connector))
            .max_decoding_message_size(berth_proto::limits::MAX_MESSAGE)
            .max_encoding_message_size(berth_proto::limits::MAX_MESSAGE);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Sends one request and decodes the peer's `Result<Resp, RaftError>`.
    async fn call<Req, Resp>(
        &mut self,
        kind: RpcKind,
        req: &Req,
        timeout: std::time::Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        if self.faults.blocked(self.target) {
            return Err(CallError::Unreachable(partitioned()));
        }
        let json = to_wire(req).map_err(|e| CallError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(CallError::Unreachable)?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(timeout);
        let res = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::PreVote => client.pre_vote(request).await,
            RpcKind::Transfer => client.transfer_leader(request).await,
        };
        let payload = res
            .map_err(|status| {
                if status.code() == tonic::Code::Unimplemented {
                    return CallError::Unimplemented(Unreachable::new(&StatusError(status)));
                }
                // A dropped connection is a reason to back off, not a fault
                // of the peer's state.
                self.client = None;
                CallError::Unreachable(Unreachable::new(&StatusError(status)))
            })?
            .into_inner();
        let result: Result<Resp, RaftError<TypeConfig>> =
            from_wire(&payload.json).map_err(|e| CallError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| CallError::Network(NetworkError::new(&e)))
    }
}

enum RpcKind {
    Append,
    Vote,
    PreVote,
    Transfer,
}

#[derive(Debug)]
struct StatusError(tonic::Status);

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code(), self.0.message())
    }
}

impl std::error::Error for StatusError {}

impl RaftNetworkV2<TypeConfig> for Network {
    type SnapshotData = std::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(RpcKind::Append, &rpc, option.hard_ttl()).await?)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            // The first request is taken before anything else: openraft
            // waits out its backoff after a failed session while it makes
            // that request. A connection refused (a member that is down)
            // fails before tonic would take one, so without this the
            // leader opened a new session every half millisecond, and the
            // one thread that also runs its heartbeats was never idle.
            let mut input = input;
            let Some(first) = input.next().await else {
                let none: BoxStream<'s, _> = Box::pin(futures::stream::empty());
                return Ok(none);
            };
            let input = futures::stream::once(std::future::ready(first)).chain(input);
            let blocked = |faults: &super::faults::Faults, target| {
                faults
                    .blocked(target)
                    .then(|| RPCError::Unreachable(partitioned()))
            };
            if let Some(e) = blocked(&self.faults, self.target) {
                return Err(e);
            }
            let mut client = self.client()?;
            // A request that does not encode, or that the fault layer cuts,
            // ends the stream; the follower then answers what came before.
            let (faults, target) = (self.faults.clone(), self.target);
            let requests = input
                .map(|req| to_wire(&req))
                .take_while(move |r| {
                    if let Err(e) = r {
                        tracing::error!(error = %e, target, "cannot encode an AppendEntries request");
                    }
                    std::future::ready(r.is_ok() && !faults.blocked(target))
                })
                .filter_map(|r| std::future::ready(r.ok()))
                .map(|json| RaftPayload { json });
            // The stream opens once the follower's headers come back; a
            // follower that accepts the connection but does not serve (it
            // is still starting) must not hold this forever.
            let opened =
                tokio::time::timeout(STREAM_OPEN_TIMEOUT, client.append_stream(requests)).await;
            let answers = match opened {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    self.client = None;
                    return Err(RPCError::Unreachable(Unreachable::new(&StatusError(
                        status,
                    ))));
                }
                Err(_) => {
                    self.client = None;
                    return Err(RPCError::Unreachable(Unreachable::new(&StatusError(
                        tonic::Status::deadline_exceeded("the replication stream did not open"),
                    ))));
                }
            };
            let (faults, target) = (self.faults.clone(), self.target);
            let answers = answers.map(move |item| {
                if let Some(e) = blocked(&faults, target) {
                    return Err(e);
                }
                let payload = item.map_err(|status| {
                    RPCError::Unreachable(Unreachable::new(&StatusError(status)))
                })?;
                let answer: Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>> =
                    from_wire(&payload.json)
                        .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                answer.map_err(|fatal| RPCError::Network(NetworkError::new(&fatal)))
            });
            let answers: BoxStream<'s, _> = Box::pin(answers);
            Ok(answers)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(RpcKind::Vote, &rpc, option.hard_ttl()).await?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RpcKind::PreVote, &rpc, option.hard_ttl()).await {
            // A member from before pre-votes counts as granting, as
            // openraft does for a network without them: a cluster in the
            // middle of an upgrade can still elect.
            Err(CallError::Unimplemented(_)) => Ok(VoteResponse::new(rpc.vote, None, true)),
            other => Ok(other?),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self
            .call(RpcKind::Transfer, &req, option.hard_ttl())
            .await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, std::fs::File>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        if self.faults.blocked(self.target) {
            return Err(StreamingError::Unreachable(partitioned()));
        }
        let network = |e: &dyn std::error::Error| {
            StreamingError::Network(NetworkError::new(&AnyError(e.to_string())))
        };
        // The file names its snapshot id in its header.
        let mut file = snapshot.snapshot;
        let id = {
            use std::io::Seek;
            let f = file.try_clone().map_err(|e| network(&e))?;
            let id = super::snapshot::Reader::open(f, std::path::Path::new("snapshot"))
                .map_err(|e| network(&e))?
                .header
                .snapshot_id;
            file.rewind().map_err(|e| network(&e))?;
            id
        };
        let head = to_wire(&SnapshotHead {
            vote,
            meta: snapshot.meta,
            snapshot_id: id,
        })
        .map_err(|e| network(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotPiece>(2);
        // The file goes piece by piece: at most two pieces are in memory.
        let reading = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            if tx
                .blocking_send(SnapshotPiece {
                    head,
                    data: Vec::new(),
                })
                .is_err()
            {
                return Ok(());
            }
            loop {
                let mut piece = vec![0u8; super::snapshot::PIECE];
                let mut filled = 0;
                while filled < piece.len() {
                    match file.read(&mut piece[filled..])? {
                        0 => break,
                        n => filled += n,
                    }
                }
                if filled == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                piece.truncate(filled);
                if tx
                    .blocking_send(SnapshotPiece {
                        head: Vec::new(),
                        data: piece,
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
        });
        let mut client = self.client().map_err(StreamingError::Unreachable)?;
        // No deadline for the whole: a large snapshot takes as long as it
        // takes, and the channel's keepalives find a peer that stopped.
        let _ = option;
        let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let sent = async {
            let res = client.install_snapshot_stream(request).await;
            let payload = res
                .map_err(|status| {
                    StreamingError::Unreachable(Unreachable::new(&StatusError(status)))
                })?
                .into_inner();
            let result: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
                from_wire(&payload.json).map_err(|e| network(&e))?;
            result.map_err(|e| network(&e))
        };
        let result = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = sent => r,
        };
        if let Ok(Err(e)) = reading.await {
            return Err(network(&e));
        }
        if result.is_err() {
            self.client = None;
        }
        result
    }
}

/// An error known only by its message.
#[derive(Debug)]
struct AnyError(String);

impl std::fmt::Display for AnyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyError {}

/// The receiving side of the Raft transport.
pub struct RaftService {
    raft: BerthRaft,
    faults: super::faults::Faults,
    contact: std::sync::Arc<super::failover::Contact>,
    /// Where received snapshots are written (raft::snapshot_dir).
    snap_dir: std::path::PathBuf,
}

impl RaftService {
    /// The service of `raft`; every AppendEntries it receives is recorded
    /// in `contact` for the fast failover.
    pub fn new(
        raft: BerthRaft,
        faults: super::faults::Faults,
        contact: std::sync::Arc<super::failover::Contact>,
        snap_dir: std::path::PathBuf,
    ) -> Self {
        Self {
            raft,
            faults,
            contact,
            snap_dir,
        }
    }

    /// Refuses a message from a peer the fault layer cuts off.
    fn check(&self, from: u64) -> Result<(), tonic::Status> {
        if self.faults.blocked(from) {
            return Err(tonic::Status::unavailable(PARTITIONED));
        }
        Ok(())
    }
}

/// The first byte of a bincode payload; a JSON one starts with `{`.
const BINCODE: u8 = 1;

/// Errors of the payload encoding.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bincode: {0}")]
    Bincode(#[from] bincode::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("an empty raft payload")]
    Empty,
}

/// Encodes an openraft message: a format byte, then bincode (binary, and
/// several times cheaper than JSON for entries full of bytes).
pub fn to_wire<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![BINCODE];
    bincode::serialize_into(&mut out, v)?;
    Ok(out)
}

/// Decodes what [`to_wire`] wrote, or the JSON older members send.
pub fn from_wire<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    match bytes.first() {
        Some(&BINCODE) => Ok(bincode::deserialize(&bytes[1..])?),
        Some(_) => Ok(serde_json::from_slice(bytes)?),
        None => Err(WireError::Empty),
    }
}

fn decode<T: DeserializeOwned>(req: tonic::Request<RaftPayload>) -> Result<T, tonic::Status> {
    from_wire(&req.into_inner().json)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed raft request: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    let json = to_wire(v).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(RaftPayload { json }))
}

type AnswerStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<RaftPayload, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type AppendStreamStream = AnswerStream;

    async fn append_stream(
        &self,
        req: tonic::Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<tonic::Response<AnswerStream>, tonic::Status> {
        let (faults, contact) = (self.faults.clone(), self.contact.clone());
        // A request that does not decode, or that comes from a peer the
        // fault layer cuts off, ends the stream, and the stream then ends
        // with an error saying why (not as if the leader had finished).
        let cut: Arc<std::sync::Mutex<Option<tonic::Status>>> = Arc::default();
        let why = cut.clone();
        let requests = req
            .into_inner()
            .map(move |item| {
                let rpc = item.and_then(|payload| {
                    from_wire::<AppendEntriesRequest<TypeConfig>>(&payload.json).map_err(|e| {
                        tonic::Status::invalid_argument(format!("malformed raft request: {e}"))
                    })
                });
                let stop = |status: tonic::Status| {
                    *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    None
                };
                match rpc {
                    Err(status) => stop(status),
                    Ok(rpc) => {
                        let from = rpc.vote.leader_id().node_id;
                        if faults.blocked(from) {
                            return stop(tonic::Status::unavailable(PARTITIONED));
                        }
                        contact.heard(from);
                        Some(rpc)
                    }
                }
            })
            .take_while(|r| std::future::ready(r.is_some()))
            .filter_map(std::future::ready);
        let answers = self.raft.stream_append(requests).map(|answer| {
            to_wire(&answer)
                .map(|json| RaftPayload { json })
                .map_err(|e| tonic::Status::internal(e.to_string()))
        });
        let end =
            futures::stream::once(
                async move { cut.lock().unwrap_or_else(|p| p.into_inner()).take() },
            )
            .filter_map(|status| std::future::ready(status.map(Err)));
        Ok(tonic::Response::new(Box::pin(answers.chain(end))))
    }

    async fn append_entries(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        let from = rpc.vote.leader_id().node_id;
        self.check(from)?;
        let res = self.raft.append_entries(rpc).await;
        self.contact.heard(from);
        encode(&res)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req)?;
        self.check(rpc.vote.leader_id().node_id)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn pre_vote(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req)?;
        self.check(rpc.vote.leader_id().node_id)?;
        encode(&self.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req)?;
        self.check(rpc.from_leader().leader_id().node_id)?;
        let res: Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>> = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(RaftError::Fatal);
        encode(&res)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        // An older member's whole snapshot in one message: written out as a
        // snapshot file, then installed as a streamed one is.
        let full: FullSnapshot = decode(req)?;
        self.check(full.vote.leader_id().node_id)?;
        let old = berth_proto::records::Snapshot::decode(full.data.as_slice())
            .map_err(|e| tonic::Status::invalid_argument(format!("not a snapshot: {e}")))?;
        let dir = self.snap_dir.clone();
        let file = tokio::task::spawn_blocking(move || {
            let header = berth_proto::records::SnapshotHeader {
                schema: old.schema,
                last_applied: old.last_applied,
                membership: old.membership,
                snapshot_id: old.snapshot_id,
                row_count: old.rows.len() as u64,
            };
            let mut w = super::snapshot::Writer::create(&dir, &header)?;
            for row in &old.rows {
                w.row(&row.key, &row.value)?;
            }
            let (path, _) = w.finish()?;
            std::fs::File::open(&path)
                .map_err(|source| super::snapshot::SnapshotError::Io { path, source })
        })
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
        self.install_file(full.vote, full.meta, file).await
    }

    async fn install_snapshot_stream(
        &self,
        req: tonic::Request<tonic::Streaming<SnapshotPiece>>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let mut pieces = req.into_inner();
        let first = pieces.message().await?.ok_or_else(|| {
            tonic::Status::invalid_argument("a snapshot stream begins with its head")
        })?;
        let head: SnapshotHead = from_wire(&first.head)
            .map_err(|e| tonic::Status::invalid_argument(format!("snapshot head: {e}")))?;
        self.check(head.vote.leader_id().node_id)?;
        // Written piece by piece under a name of its own, then moved to
        // where the snapshot's id puts it.
        std::fs::create_dir_all(&self.snap_dir)
            .map_err(|e| tonic::Status::internal(format!("{}: {e}", self.snap_dir.display())))?;
        let dest = super::snapshot::path(&self.snap_dir, &head.snapshot_id);
        let incoming = dest.with_extension("snap.incoming");
        let io =
            |e: std::io::Error| tonic::Status::internal(format!("{}: {e}", incoming.display()));
        // Each piece is written on the blocking pool, at the disk's pace
        // (raft/writeback.rs), not on the thread that serves everything.
        let file = std::fs::File::create(&incoming).map_err(io)?;
        let mut out = super::writeback::Paced::new(file);
        while let Some(p) = pieces.message().await? {
            let (w, r) = tokio::task::spawn_blocking(move || {
                let r = std::io::Write::write_all(&mut out, &p.data);
                (out, r)
            })
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
            r.map_err(io)?;
            out = w;
        }
        tokio::task::spawn_blocking(move || out.into_inner().sync_all())
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(io)?;
        tokio::fs::rename(&incoming, &dest).await.map_err(io)?;
        let file = std::fs::File::open(&dest).map_err(io)?;
        self.install_file(head.vote, head.meta, file).await
    }
}

impl RaftService {
    async fn install_file(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        file: std::fs::File,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: file,
        };
        let res: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(RaftError::Fatal);
        encode(&res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::codec::log_id;

    #[test]
    fn payloads_round_trip_in_bincode_and_json_is_still_read() {
        let req: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 1, 41)),
            entries: vec![],
            leader_commit: Some(log_id(3, 1, 40)),
        };
        let wire = to_wire(&req).unwrap();
        assert_eq!(wire[0], BINCODE);
        let back: AppendEntriesRequest<TypeConfig> = from_wire(&wire).unwrap();
        assert_eq!(back.prev_log_id, req.prev_log_id);
        let json = serde_json::to_vec(&req).unwrap();
        let back: AppendEntriesRequest<TypeConfig> = from_wire(&json).unwrap();
        assert_eq!(back.leader_commit, req.leader_commit);
        assert!(from_wire::<AppendEntriesRequest<TypeConfig>>(&[]).is_err());
        assert!(from_wire::<AppendEntriesRequest<TypeConfig>>(&[BINCODE, 9]).is_err());
    }
}
