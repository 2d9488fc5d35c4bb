//! The tonic transport between Raft members: openraft's requests travel
//! serialized with serde inside raft.proto's `RaftPayload` (bincode, marked
//! by a leading format byte; JSON from older members is still read), and
//! each side of the RPC lives here (the client in [`Network`], the server
//! in [`RaftService`]).

use berth_proto::raft::raft_client::RaftClient;
use berth_proto::raft::raft_server::Raft as RaftRpc;
use berth_proto::raft::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::{BerthRaft, TypeConfig};

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

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Network {
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let uri = format!("http://{}", self.node.addr);
        let endpoint = Channel::from_shared(uri)
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(std::time::Duration::from_millis(500));
        let c = RaftClient::new(endpoint.connect_lazy());
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.faults.blocked(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&StatusError(
                tonic::Status::unavailable("partitioned by the fault layer"),
            ))));
        }
        let json = to_wire(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(option.hard_ttl());
        let res = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::Snapshot => client.install_snapshot(request).await,
        };
        let payload = res
            .map_err(|status| {
                // A dropped connection is a reason to back off, not a fault
                // of the peer's state.
                self.client = None;
                RPCError::Unreachable(Unreachable::new(&StatusError(status)))
            })?
            .into_inner();
        let result: Result<Resp, RaftError<u64, E>> =
            from_wire(&payload.json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

#[derive(Debug)]
struct StatusError(tonic::Status);

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code(), self.0.message())
    }
}

impl std::error::Error for StatusError {}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.call(RpcKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.call(RpcKind::Vote, &rpc, &option).await
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
            return Err(tonic::Status::unavailable("partitioned by the fault layer"));
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

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        self.check(from)?;
        let res = self.raft.append_entries(rpc).await;
        self.contact.heard(from);
        encode(&res)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<u64> = decode(req)?;
        self.check(rpc.vote.leader_id().voted_for().unwrap_or_default())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        self.check(rpc.vote.leader_id().voted_for().unwrap_or_default())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Vote};

    #[test]
    fn payloads_round_trip_in_bincode_and_json_is_still_read() {
        let req: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
            entries: vec![],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 40)),
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
