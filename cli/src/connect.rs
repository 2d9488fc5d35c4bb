//! The one place the CLI connects to a cluster. Credentials (mutual TLS,
//! the admin config under BERTH_CONFIG_DIR) will plug in here.

use std::time::Duration;

use berth_proto::cluster::cluster_client::ClusterClient;
use tonic::transport::{Channel, Endpoint};

/// Why the CLI could not reach the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    #[error("cannot connect to the berth cluster at {addrs}: {reason} (is berth-server running there? set --host or BERTH_HOST)")]
    Unreachable { addrs: String, reason: String },
}

/// Connects to the first reachable server of a comma-separated list, then
/// to the Raft leader it names (writes commit there, reads are current
/// there); if the leader cannot be reached, stays with the server found.
pub async fn connect(hosts: &str) -> Result<ClusterClient<Channel>, ConnectError> {
    let _ = HOSTS.set(hosts.to_string());
    let addrs: Vec<&str> = hosts
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut last = String::from("no address given");
    for addr in &addrs {
        match connect_one(addr).await {
            Ok(mut client) => {
                let status = client
                    .get_cluster_status(berth_proto::cluster::ClusterStatusRequest {})
                    .await
                    .map(|r| r.into_inner());
                if let Ok(s) = status {
                    if s.leader_id.is_some()
                        && s.leader_id != Some(s.id)
                        && !s.leader_addr.is_empty()
                    {
                        if let Ok(leader) = connect_one(&s.leader_addr).await {
                            return Ok(leader);
                        }
                    }
                }
                return Ok(client);
            }
            Err(ConnectError::Unreachable { reason, .. }) => last = reason,
            Err(e) => return Err(e),
        }
    }
    Err(ConnectError::Unreachable {
        addrs: addrs.join(","),
        reason: last,
    })
}

/// The servers the CLI was pointed at, for [`reconnect`].
static HOSTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Connects again to the servers of the first [`connect`] (to the leader
/// they name now): for a stream to resume after a leader change.
pub async fn reconnect() -> Result<ClusterClient<Channel>, ConnectError> {
    connect(HOSTS.get().map(String::as_str).unwrap_or_default()).await
}

async fn connect_one(addr: &str) -> Result<ClusterClient<Channel>, ConnectError> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|_| ConnectError::BadAddress(addr.to_string()))?
        .connect_timeout(Duration::from_secs(3));
    match endpoint.connect().await {
        Ok(ch) => Ok(ClusterClient::new(ch)
            .max_decoding_message_size(berth_proto::limits::MAX_MESSAGE)
            .max_encoding_message_size(berth_proto::limits::MAX_MESSAGE)),
        Err(e) => Err(ConnectError::Unreachable {
            addrs: addr.to_string(),
            reason: root_cause(&e),
        }),
    }
}

/// The innermost error message, which names the real cause (for example
/// "Connection refused") rather than "transport error".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
