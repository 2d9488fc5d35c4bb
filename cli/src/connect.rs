//! The one place the CLI connects to a cluster: gRPC over TLS with the
//! admin credential (config.rs), to the servers it names or those of
//! --host / BERTH_HOST.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::transport;
use tokio_rustls::rustls;
use tonic::transport::Channel;

use crate::config::{AdminConf, ConfigError};

/// Why the CLI could not reach the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    #[error("cannot connect to the berth cluster at {addrs}: {reason}")]
    Unreachable { addrs: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the credential: {0}")]
    Credential(#[from] transport::TransportError),
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// The servers, in order.
    pub addrs: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    /// The servers of `hosts` (comma-separated; empty for the
    /// credential's endpoints) with the credential `conf`.
    pub fn new(hosts: Option<&str>, conf: &AdminConf) -> Result<Self, ConnectError> {
        let addrs: Vec<String> = match hosts {
            Some(h) => h
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            None => conf.endpoints.clone(),
        };
        Ok(Self {
            addrs,
            tls: transport::client_config(&conf.credentials())?,
        })
    }
}

/// Connects to the first reachable server of the target, then to the
/// Raft leader it names (writes commit there, reads are current there);
/// if the leader cannot be reached, stays with the server found.
pub async fn connect(target: &Target) -> Result<ClusterClient<Channel>, ConnectError> {
    let _ = TARGET.set(target.clone());
    let mut last = String::from("no address given");
    for addr in &target.addrs {
        match connect_one(target, addr).await {
            Ok(mut client) => {
                let status = client
                    .get_cluster_status(berth_proto::cluster::ClusterStatusRequest {})
                    .await
                    .map(|r| r.into_inner());
                match status {
                    Ok(s) => {
                        let _ = STATUS.set(s.clone());
                        if s.leader_id.is_some()
                            && s.leader_id != Some(s.id)
                            && !s.leader_addr.is_empty()
                        {
                            if let Ok(leader) = connect_one(target, &s.leader_addr).await {
                                return Ok(leader);
                            }
                        }
                    }
                    // Refused (a credential of the wrong role, revoked):
                    // every other server would say the same.
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                        ) =>
                    {
                        return Err(ConnectError::Unreachable {
                            addrs: addr.clone(),
                            reason: s.message().to_string(),
                        })
                    }
                    Err(_) => {}
                }
                return Ok(client);
            }
            Err(ConnectError::Unreachable { reason, .. }) => last = reason,
            Err(e) => return Err(e),
        }
    }
    Err(ConnectError::Unreachable {
        addrs: target.addrs.join(","),
        reason: format!(
            "{last} (is berth-server running there? set --host or BERTH_HOST, or the \
             credential's endpoints)"
        ),
    })
}

/// Renews the admin certificate of the credential file at `path` when a
/// third of its validity is left, and writes it back there: a credential
/// in use does not expire. A failure is only a warning; the command goes
/// on with the certificate it has.
pub async fn renew_if_due(
    target: &Target,
    path: &std::path::Path,
    conf: &AdminConf,
    now_anyway: bool,
) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if !now_anyway && !conf.renewal_due(now) {
        return;
    }
    let renewed = async {
        let (key_pem, csr_pem) = transport::new_key_and_request()?;
        let mut last = String::new();
        for addr in &target.addrs {
            let channel = match transport::endpoint(addr)?
                .connect_timeout(Duration::from_secs(3))
                .connect_with_connector(transport::Connector::new(target.tls.clone()))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    last = root_cause(&e);
                    continue;
                }
            };
            let r = berth_proto::cluster::join_client::JoinClient::new(channel)
                .renew(berth_proto::cluster::RenewRequest { csr_pem })
                .await
                .map_err(|s| std::io::Error::other(s.message().to_string()))?
                .into_inner();
            let mut next = conf.clone();
            next.cert = r.cert_pem;
            next.key = key_pem;
            next.ca = r.trusted_pem;
            next.issued_at_s = now;
            next.not_after_s = r.not_after_s;
            crate::config::store(path, &next)?;
            return Ok::<_, anyhow::Error>(());
        }
        Err(anyhow::anyhow!("no server answered: {last}"))
    }
    .await;
    if let Err(e) = renewed {
        eprintln!(
            "berth: warning: renewing the admin certificate in {}: {e}",
            path.display()
        );
    }
}

/// The cluster status the first [`connect`] read.
static STATUS: std::sync::OnceLock<berth_proto::cluster::ClusterStatus> =
    std::sync::OnceLock::new();

/// True if the cluster's CA is not the one the credential is of (a CA
/// rotation), or a rotation ended and the credential still trusts the old
/// CA: then it is renewed at once.
pub fn ca_moved(conf: &AdminConf) -> bool {
    let Some(s) = STATUS.get() else {
        return false;
    };
    if s.ca_digest.is_empty() {
        return false;
    }
    let issuer = transport::certs(&conf.cert, "the certificate")
        .ok()
        .and_then(|c| c.get(1).map(|d| transport::digest_of_der(d.as_ref())));
    let trusted = transport::certs(&conf.ca, "the CA")
        .map(|c| c.len())
        .unwrap_or(1);
    match issuer {
        Some(i) => i != s.ca_digest || (!s.ca_rotating && trusted > 1),
        None => false,
    }
}

/// Names the cluster of the first [`connect`] (the digest of its CA, or
/// its first server's address), for what the CLI keeps per cluster.
pub fn cluster_identity() -> Option<String> {
    STATUS
        .get()
        .map(|s| s.ca_digest.clone())
        .filter(|d| !d.is_empty())
        .or_else(|| TARGET.get().and_then(|t| t.addrs.first().cloned()))
}

/// The target of the first [`connect`], for [`reconnect`].
static TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();

/// Connects again to the servers of the first [`connect`] (to the leader
/// they name now): for a stream to resume after a leader change.
pub async fn reconnect() -> Result<ClusterClient<Channel>, ConnectError> {
    match TARGET.get() {
        Some(t) => connect(t).await,
        None => Err(ConnectError::BadAddress(String::new())),
    }
}

async fn connect_one(target: &Target, addr: &str) -> Result<ClusterClient<Channel>, ConnectError> {
    let endpoint = transport::endpoint(addr)
        .map_err(|_| ConnectError::BadAddress(addr.to_string()))?
        .connect_timeout(Duration::from_secs(3));
    match endpoint
        .connect_with_connector(transport::Connector::new(target.tls.clone()))
        .await
    {
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
