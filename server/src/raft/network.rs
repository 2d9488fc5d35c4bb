//! The tonic transport between Raft members: openraft's requests travel
//! serialized with serde inside raft.proto's `RaftPayload` (bincode, marked
//! by a leading format byte; JSON from older members is still read), and
//! each side of the RPC lives here (the client in [`Network`], the server
//! in [`RaftService`]).

use berth_proto::raft::raft_client::RaftClient;
use berth_proto::raft::raft_server::Raft as RaftRpc;
use berth_proto::raft::RaftPayload;
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
#[derive(Debug, Default, Clone)]
pub struct NetworkFactory {
    faults: super::faults::Faults,
}

impl NetworkFactory {
    pub fn new(faults: super::faults::Faults) -> Self {
        Self { faults }
    }
}

/// The connection to one peer; the channel connects lazily and reconnects
/// by itself.
pub struct Network {
    target: u64,
    node: BasicNode,
    client: Option<RaftClient<Channel>>,
    faults: super::faults::Faults,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Network {
        Network {
            target,
            node: node.clone(),
            client: None,
            faults: self.faults.clone(),
        }
    }
}

/// A whole snapshot as it crosses the wire in one InstallSnapshot call.
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
}

impl From<CallError> for RPCError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(u) => RPCError::Unreachable(u),
            CallError::Network(n) => RPCError::Network(n),
        }
    }
}

impl From<CallError> for StreamingError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(u) => StreamingError::Unreachable(u),
            CallError::Network(n) => StreamingError::Network(n),
        }
    }
}

impl Network {
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let uri = format!("http://{}", self.node.addr);
        // Keepalives find a peer that stopped answering (a stopped process,
        // a half-open connection): the replication stream has no deadline
        // of its own, so without them it would wait forever.
        let endpoint = Channel::from_shared(uri)
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_keepalive(Some(Duration::from_secs(1)))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true);
        let c = RaftClient::new(endpoint.connect_lazy())
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
            RpcKind::Snapshot => client.install_snapshot(request).await,
            RpcKind::Transfer => client.transfer_leader(request).await,
        };
        let payload = res
            .map_err(|status| {
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
    Snapshot,
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
    type SnapshotData = std::io::Cursor<Vec<u8>>;

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
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, std::io::Cursor<Vec<u8>>>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = FullSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.call(RpcKind::Snapshot, &req, option.hard_ttl()) => r.map_err(Into::into),
        }
    }
}

/// The receiving side of the Raft transport.
pub struct RaftService {
    raft: BerthRaft,
    faults: super::faults::Faults,
    contact: std::sync::Arc<super::failover::Contact>,
}

impl RaftService {
    /// The service of `raft`; every AppendEntries it receives is recorded
    /// in `contact` for the fast failover.
    pub fn new(
        raft: BerthRaft,
        faults: super::faults::Faults,
        contact: std::sync::Arc<super::failover::Contact>,
    ) -> Self {
        Self {
            raft,
            faults,
            contact,
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
        let full: FullSnapshot = decode(req)?;
        self.check(full.vote.leader_id().node_id)?;
        let snapshot = openraft::Snapshot {
            meta: full.meta,
            snapshot: std::io::Cursor::new(full.data),
        };
        let res: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> = self
            .raft
            .install_full_snapshot(full.vote, snapshot)
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
