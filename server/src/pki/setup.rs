//! Makes the cluster's identity once, and keeps this server's credentials
//! and (on the bootstrap server) the admin credential in the data dir.
//!
//! Any leader that finds no CA in the state makes one (with the secrets
//! of the join tokens) and commits it; a race between two is settled by
//! the state, which takes the first. Every server then signs its own
//! certificate with the replicated CA, and signs it again when a third
//! of its validity is left.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::records::{self, command::Op, SCHEMA_VERSION};

use super::{identity_of, ClusterCa, JoinToken, Role};
use crate::app::App;
use crate::tls::credential_paths;

/// What this server keeps.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    pub data_dir: PathBuf,
    /// This server's id: the name in its certificate.
    pub id: u64,
    /// The addresses and host names clients reach it by.
    pub hosts: Vec<String>,
    /// How long a certificate is valid (90 days by default).
    pub validity: Duration,
    /// Where to write the admin credential, on the bootstrap server's
    /// first start, and the endpoints it names.
    pub admin: Option<(PathBuf, Vec<String>)>,
}

/// Why a credential could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Pki(#[from] super::PkiError),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("reading the state: {0}")]
    State(String),
}

/// The admin credential file (`DATA_DIR/admin.conf`), as the CLI reads it.
pub use berth_proto::credential::AdminConf;

/// The CA a bootstrap server made before its cluster existed, waiting in
/// its data dir (0600) to be committed as the cluster's.
fn pending_ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("pending-ca.json")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PendingCa {
    cert: String,
    key: String,
}

/// At `--bootstrap` on a data dir without credentials: makes the cluster's
/// CA and this server's certificate, so that it serves TLS from its first
/// moment. The CA waits in the data dir until the server, leading its
/// one-member cluster, commits it to the state ([`run`]).
pub fn bootstrap_credentials(cfg: &SetupConfig) -> Result<(), SetupError> {
    let ca = ClusterCa::generate(&uuid::Uuid::new_v4().simple().to_string()[..8])?;
    let pending = PendingCa {
        cert: ca.cert_pem().to_string(),
        key: ca.key_pem().to_string(),
    };
    let path = pending_ca_path(&cfg.data_dir);
    make_tls_dir(&path)?;
    let text = serde_json::to_string(&pending).map_err(|e| file_err(&path, e.into()))?;
    write_private(&path, &text)?;
    keep_server_credentials(&ca, None, ca.cert_pem(), cfg)?;
    Ok(())
}

/// Runs for as long as the server does. After it writes new credentials
/// (a first certificate, a renewal, a CA other than the one they were
/// from), the listener and this server's connections take them.
pub async fn run(app: App, cfg: SetupConfig, tls: std::sync::Arc<crate::tls::ServerTls>) {
    let mut changes = app.state.subscribe();
    // The CAs last acted on, and when to look again regardless: often
    // enough to renew in time (six times per validity, at most hourly).
    let mut done_for: Option<(String, String, bool)> = None;
    let mut next_look = tokio::time::Instant::now();
    loop {
        let cas = app
            .state
            .pki()
            .ok()
            .flatten()
            .map(|p| (p.ca_cert_pem, p.previous_ca_cert_pem, p.nodes_moved));
        let due = tokio::time::Instant::now() >= next_look;
        if due || cas.is_none() || cas != done_for {
            match step(&app, &cfg, &tls).await {
                Ok(true) => {
                    done_for = cas;
                    next_look = tokio::time::Instant::now() + RECHECK.min(cfg.validity / 6);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("keeping this server's credentials: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
        }
        // A new CA (a rotation, its end) is acted on as soon as it applies.
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// How often kept credentials are looked at again (for renewal).
const RECHECK: Duration = Duration::from_secs(3600);

/// One look: true once this server's credentials are in place.
async fn step(
    app: &App,
    cfg: &SetupConfig,
    tls: &std::sync::Arc<crate::tls::ServerTls>,
) -> Result<bool, SetupError> {
    let pki = match app
        .state
        .pki()
        .map_err(|e| SetupError::State(e.to_string()))?
    {
        Some(p) => p,
        None => {
            if app.is_leader() {
                make_pki(app, &cfg.data_dir).await?;
            }
            return Ok(false);
        }
    };
    let pending = pending_ca_path(&cfg.data_dir);
    if pending.exists() {
        // Committed (or another CA was, from a backup): it waits no more.
        std::fs::remove_file(&pending).map_err(|e| file_err(&pending, e))?;
    }
    // Keys, signatures and synced files, off the server's one thread:
    // Raft's heartbeats must not wait behind them.
    let cfg = cfg.clone();
    let tls = tls.clone();
    tokio::task::spawn_blocking(move || {
        let ca = ClusterCa::from_pem(&pki.ca_cert_pem, &pki.ca_key_pem)?;
        let trusted = super::trusted_pem(&pki);
        // In a rotation's first half a certificate of the old CA is kept:
        // clients that trust only the old one must still check it.
        let old_ok = (!pki.previous_ca_cert_pem.is_empty() && !pki.nodes_moved)
            .then_some(pki.previous_ca_cert_pem.as_str());
        if keep_server_credentials(&ca, old_ok, &trusted, &cfg)? {
            tls.reload()
                .map_err(|e| SetupError::State(format!("loading the new credentials: {e}")))?;
        }
        if let Some((path, endpoints)) = &cfg.admin {
            let current = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<AdminConf>(&t).ok());
            if !matches!(current, Some(c) if c.ca.trim() == trusted.trim()) {
                write_admin_conf(&ca, &trusted, path, endpoints, cfg.validity)?;
            }
        }
        Ok(true)
    })
    .await
    .map_err(|e| SetupError::State(format!("the credentials task failed: {e}")))?
}

/// Commits the CA this server made at its bootstrap (or, if it has none,
/// a new one) as the cluster's.
async fn make_pki(app: &App, data_dir: &Path) -> Result<(), SetupError> {
    let pending = pending_ca_path(data_dir);
    let ca = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&pending) {
        Ok(text) => {
            let p: PendingCa = serde_json::from_str(&text)
                .map_err(|e| file_err(&pending, std::io::Error::other(e)))?;
            Ok(ClusterCa::from_pem(&p.cert, &p.key)?)
        }
        Err(_) => Ok::<_, SetupError>(ClusterCa::generate(
            &uuid::Uuid::new_v4().simple().to_string()[..8],
        )?),
    })
    .await
    .map_err(|e| SetupError::State(format!("the CA task failed: {e}")))??;
    let digest = ca.digest()?;
    let pki = records::Pki {
        schema: SCHEMA_VERSION,
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_pem: ca.key_pem().to_string(),
        agent_token_secret: JoinToken::generate(&digest, Role::Agent).secret,
        server_token_secret: JoinToken::generate(&digest, Role::Server).secret,
        previous_ca_cert_pem: String::new(),
        nodes_moved: false,
    };
    match app
        .write(Op::InitPki(records::InitPki { pki: Some(pki) }))
        .await
    {
        Ok(_) => {
            tracing::info!(ca = %digest, "made the cluster's CA");
            Ok(())
        }
        // Another leader made it first: the state keeps that one.
        Err(e) => {
            tracing::debug!("the cluster's CA was not committed here: {e}");
            Ok(())
        }
    }
}

/// Signs this server's certificate again when it is missing, of another
/// CA than the one that signs, or two thirds of the way to its expiry,
/// and keeps the trusted CAs `trusted`; true if it changed either.
fn keep_server_credentials(
    ca: &ClusterCa,
    old_ok: Option<&str>,
    trusted: &str,
    cfg: &SetupConfig,
) -> Result<bool, SetupError> {
    let (cert_path, key_path, ca_path) = credential_paths(&cfg.data_dir);
    let current = std::fs::read_to_string(&cert_path).unwrap_or_default();
    // The certificate file holds the issuing CA's after the server's.
    let fresh = (current.contains(ca.cert_pem().trim())
        || old_ok.is_some_and(|old| current.contains(old.trim())))
        && super::first_der(&current)
            .ok()
            .and_then(|der| identity_of(&der).ok())
            .is_some_and(|id| {
                let left = id.not_after - now_s();
                id.role == Role::Server
                    && id.name == cfg.id.to_string()
                    && left > cfg.validity.as_secs() as i64 / 3
            });
    let trust_kept = std::fs::read_to_string(&ca_path).is_ok_and(|t| t.trim() == trusted.trim());
    if fresh {
        if trust_kept {
            return Ok(false);
        }
        write_private(&ca_path, trusted)?;
        tracing::info!("the CAs this server trusts changed");
        return Ok(true);
    }
    let issued = ca.issue(Role::Server, &cfg.id.to_string(), &cfg.hosts, cfg.validity)?;
    make_tls_dir(&cert_path)?;
    // The key first: a certificate is never on disk without its key. The
    // certificate file holds the CA's after the server's, so that a
    // joiner finds in the handshake the CA its token names.
    write_private(&key_path, issued.key_pem.as_deref().unwrap_or_default())?;
    write_private(&cert_path, &format!("{}{}", issued.cert_pem, ca.cert_pem()))?;
    write_private(&ca_path, trusted)?;
    tracing::info!(serial = %issued.serial, "signed this server's certificate");
    Ok(true)
}

/// Makes the directory of a credential file, 0700.
fn make_tls_dir(file: &Path) -> Result<(), SetupError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| file_err(dir, e))
}

/// Keeps the credentials a joining server got from the cluster (its
/// certificate then the CA's, its key, the CA to trust).
pub fn keep_enrolled(
    data_dir: &Path,
    key_pem: &str,
    cert_chain_pem: &str,
    trusted_pem: &str,
) -> Result<(), SetupError> {
    let (cert_path, key_path, ca_path) = credential_paths(data_dir);
    make_tls_dir(&cert_path)?;
    write_private(&key_path, key_pem)?;
    write_private(&cert_path, cert_chain_pem)?;
    write_private(&ca_path, trusted_pem)?;
    Ok(())
}

fn write_admin_conf(
    ca: &ClusterCa,
    trusted: &str,
    path: &Path,
    endpoints: &[String],
    validity: Duration,
) -> Result<(), SetupError> {
    let issued = ca.issue(Role::Admin, "admin", &[], validity)?;
    let conf = AdminConf {
        endpoints: endpoints.to_vec(),
        ca: trusted.to_string(),
        // The issuing CA's after the admin's: what tells a CLI, during a
        // rotation, which CA its credential is of.
        cert: format!("{}{}", issued.cert_pem, ca.cert_pem()),
        key: issued.key_pem.unwrap_or_default(),
        issued_at_s: now_s(),
        not_after_s: issued.not_after,
    };
    let text = serde_json::to_string_pretty(&conf).map_err(|e| SetupError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_private(path, &text)?;
    tracing::info!(path = %path.display(), "wrote the admin credential");
    Ok(())
}

/// Writes a file only its owner can read (0600), whole or not at all.
pub fn write_private(path: &Path, contents: &str) -> Result<(), SetupError> {
    crate::files::write_synced(path, contents.as_bytes(), 0o600).map_err(|e| file_err(path, e))
}

fn file_err(path: &Path, e: std::io::Error) -> SetupError {
    SetupError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

use berth_proto::credential::now_s;
