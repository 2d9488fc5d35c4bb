//! The agent's one TLS setup place (DESIGN.md, Security): its node's
//! certificate in `DATA_DIR/tls`, got once from the cluster with a join
//! token, and signed again before it expires.
//!
//! On the first start the agent makes a key, connects to a server with
//! no certificate of its own, and trusts the server only if the server's
//! chain holds the CA whose digest the token carries; then it sends the
//! token and a request for its node name. The cluster answers with a
//! certificate that names the node (`berth://agent/NAME`): every later
//! connection presents it, and the cluster takes the node's name from it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_proto::cluster::join_client::JoinClient;
use berth_proto::cluster::{EnrollRequest, EnrollResponse, RenewRequest};
use berth_proto::transport::{self, ClientCredentials, Connector, TransportError};
use tokio_rustls::rustls;

/// What the agent needs to get or keep its certificate.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    /// Where the credentials live: `DATA_DIR/tls` (a simulated node's
    /// under `DATA_DIR/tls-sim/NAME`).
    pub dir: PathBuf,
    /// The node's name, which the certificate must carry.
    pub node: String,
    /// The servers to ask, HOST:PORT.
    pub servers: Vec<String>,
    /// The agent join token, for a first start.
    pub token: Option<String>,
}

/// Why the agent has no usable certificate.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0} holds no credentials, and no join token was given: start the agent with --token TOKEN, --token-file FILE or BERTH_TOKEN (`berth cluster join-token agent` prints it)")]
    NoToken(String),
    #[error("this is a {0} join token: an agent joins with the agent token (`berth cluster join-token agent`)")]
    WrongRole(String),
    #[error("the credentials in {dir} are for node {found}, not {wanted}: start with --name {found}, or give this node a data dir of its own")]
    OtherNode {
        dir: String,
        found: String,
        wanted: String,
    },
    #[error("the cluster refused this node: {0}")]
    Refused(String),
    #[error("no server answered ({0}); still trying")]
    Unreachable(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// The agent's TLS: the client configuration every connection uses, read
/// again after a renewal.
pub struct AgentTls {
    cfg: CredentialConfig,
    client: RwLock<Arc<rustls::ClientConfig>>,
    not_after: AtomicI64,
    issued_at: AtomicI64,
    /// The digest of the CA that signed the certificate, and how many CAs
    /// the node trusts (two during a rotation).
    issuer: RwLock<(String, usize)>,
    /// Wakes [`AgentTls::keep_renewed`] for a renewal now (a CA rotation).
    renew_now: tokio::sync::Notify,
}

/// What is kept beside the certificate.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Meta {
    node: String,
    not_after_s: i64,
    issued_at_s: i64,
}

impl AgentTls {
    /// The credentials in the data dir, or new ones from the cluster
    /// (with the token), asked of each server in turn until one answers.
    pub async fn open(cfg: CredentialConfig) -> Result<Arc<Self>, CredentialError> {
        if !cfg.dir.join("cert.pem").exists() {
            let token = cfg
                .token
                .clone()
                .ok_or_else(|| CredentialError::NoToken(cfg.dir.display().to_string()))?;
            let mut attempt = 0u32;
            loop {
                match enroll(&cfg, &token).await {
                    Ok(()) => break,
                    Err(CredentialError::Unreachable(why)) => {
                        if attempt.is_multiple_of(10) {
                            tracing::info!("enrolling this node: {why}");
                        }
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let meta = read_meta(&cfg.dir)?;
        if meta.node != cfg.node {
            return Err(CredentialError::OtherNode {
                dir: cfg.dir.display().to_string(),
                found: meta.node,
                wanted: cfg.node.clone(),
            });
        }
        let creds = load(&cfg.dir)?;
        let client = transport::client_config(&creds)?;
        Ok(Arc::new(Self {
            cfg,
            client: RwLock::new(client),
            not_after: AtomicI64::new(meta.not_after_s),
            issued_at: AtomicI64::new(meta.issued_at_s),
            issuer: RwLock::new(issuer_of(&creds)),
            renew_now: tokio::sync::Notify::new(),
        }))
    }

    /// The configuration of the agent's connections.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A connector for the agent's channels: each connection takes the
    /// certificate current then.
    pub fn connector(self: &Arc<Self>) -> Connector {
        let me = self.clone();
        Connector::current(move || me.client())
    }

    /// What a heartbeat's answer says of the cluster's CA: if another CA
    /// signs now, or a rotation ended and this node still trusts the old
    /// one, the certificate is renewed at once.
    pub fn note_ca(&self, ca_digest: &str, rotating: bool) {
        if ca_digest.is_empty() {
            return;
        }
        let (issuer, trusted) = self
            .issuer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if issuer != ca_digest || (!rotating && trusted > 1) {
            self.renew_now.notify_one();
        }
    }

    /// Renews the certificate whenever a third of its validity is left
    /// (or a CA rotation asks), for as long as the agent runs.
    pub async fn keep_renewed(self: Arc<Self>) {
        loop {
            let now = now_s();
            let not_after = self.not_after.load(Ordering::Relaxed);
            let issued = self.issued_at.load(Ordering::Relaxed);
            let due = not_after - (not_after - issued) / 3;
            if now < due {
                let wait = (due - now).clamp(1, 3600) as u64;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(wait)) => continue,
                    _ = self.renew_now.notified() => {}
                }
            }
            match self.renew().await {
                Ok(()) => tracing::info!(
                    node = %self.cfg.node,
                    "renewed this node's certificate"
                ),
                Err(e) => {
                    tracing::warn!("renewing this node's certificate: {e}");
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    }

    async fn renew(&self) -> Result<(), CredentialError> {
        let (key_pem, csr_pem) = transport::new_key_and_request()?;
        let mut last = String::new();
        for addr in &self.cfg.servers {
            let channel = match transport::endpoint(addr)?
                .connect_timeout(Duration::from_secs(3))
                .connect_with_connector(Connector::new(self.client()))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    last = berth_proto::one_line(&e);
                    continue;
                }
            };
            let reply = JoinClient::new(channel)
                .renew(RenewRequest {
                    csr_pem: csr_pem.clone(),
                })
                .await;
            match reply {
                Ok(r) => {
                    let r = r.into_inner();
                    keep(&self.cfg.dir, &self.cfg.node, &key_pem, &r)?;
                    let creds = load(&self.cfg.dir)?;
                    let client = transport::client_config(&creds)?;
                    *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
                    *self.issuer.write().unwrap_or_else(|p| p.into_inner()) = issuer_of(&creds);
                    self.not_after.store(r.not_after_s, Ordering::Relaxed);
                    self.issued_at.store(now_s(), Ordering::Relaxed);
                    return Ok(());
                }
                Err(s) if s.code() == tonic::Code::Unavailable => last = s.message().to_string(),
                Err(s) => return Err(CredentialError::Refused(s.message().to_string())),
            }
        }
        Err(CredentialError::Unreachable(last))
    }
}

/// One round of enrollment: each server in turn, until one answers.
async fn enroll(cfg: &CredentialConfig, token: &str) -> Result<(), CredentialError> {
    let parts = transport::token_parts(token)?;
    if parts.role != "agent" {
        return Err(CredentialError::WrongRole(parts.role));
    }
    let (tls, pinned) = transport::pinned_by_digest(&parts.ca_digest)?;
    let (key_pem, csr_pem) = transport::new_key_and_request()?;
    let mut last = String::from("no server given");
    for addr in &cfg.servers {
        let channel = match transport::endpoint(addr)?
            .connect_timeout(Duration::from_secs(3))
            .connect_with_connector(Connector::new(tls.clone()))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let why = berth_proto::one_line(&e);
                // A server of another CA is no place to send the token.
                if why.contains("join token names") {
                    return Err(CredentialError::Refused(format!("{addr}: {why}")));
                }
                last = format!("{addr}: {why}");
                continue;
            }
        };
        let reply = JoinClient::new(channel)
            .enroll(EnrollRequest {
                token: token.to_string(),
                csr_pem: csr_pem.clone(),
                name: cfg.node.clone(),
                addr: String::new(),
                server_id: 0,
            })
            .await;
        match reply {
            Ok(r) => {
                let mut r = r.into_inner();
                if r.trusted_pem.is_empty() {
                    r.trusted_pem = pinned.ca_pem().unwrap_or_default();
                }
                keep(&cfg.dir, &cfg.node, &key_pem, &r)?;
                tracing::info!(node = %cfg.node, "the cluster gave this node its certificate");
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                last = format!("{addr}: {}", s.message())
            }
            Err(s) => return Err(CredentialError::Refused(s.message().to_string())),
        }
    }
    Err(CredentialError::Unreachable(last))
}

/// Writes the credentials, the key first, each 0600 in a 0700 dir.
fn keep(dir: &Path, node: &str, key_pem: &str, r: &EnrollResponse) -> Result<(), CredentialError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| file_err(dir, e))?;
    let meta = Meta {
        node: node.to_string(),
        not_after_s: r.not_after_s,
        issued_at_s: now_s(),
    };
    let meta = serde_json::to_string(&meta).map_err(|e| file_err(dir, e.into()))?;
    for (name, text) in [
        ("key.pem", key_pem),
        ("ca.pem", r.trusted_pem.as_str()),
        ("meta.json", meta.as_str()),
        // The certificate last: its presence says the rest is there.
        ("cert.pem", r.cert_pem.as_str()),
    ] {
        let path = dir.join(name);
        berth_proto::credential::write_private(&path, text.as_bytes(), 0o600)
            .map_err(|e| file_err(&path, e))?;
    }
    Ok(())
}

fn load(dir: &Path) -> Result<ClientCredentials, CredentialError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))
    };
    Ok(ClientCredentials {
        trusted_pem: read("ca.pem")?,
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
    })
}

/// The digest of the CA that signed a certificate (the one after it in
/// its file), and how many CAs are trusted.
fn issuer_of(creds: &ClientCredentials) -> (String, usize) {
    let issuer = transport::certs(&creds.cert_pem, "the certificate")
        .ok()
        .and_then(|c| c.get(1).map(|der| transport::digest_of_der(der.as_ref())))
        .unwrap_or_default();
    let trusted = transport::certs(&creds.trusted_pem, "the trusted CAs")
        .map(|c| c.len())
        .unwrap_or(1);
    (issuer, trusted)
}

fn read_meta(dir: &Path) -> Result<Meta, CredentialError> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| file_err(&path, e.into()))
}

fn file_err(path: &Path, e: std::io::Error) -> CredentialError {
    CredentialError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

use berth_proto::credential::now_s;
