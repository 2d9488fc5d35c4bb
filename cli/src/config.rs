//! The CLI's credentials, like a kubeconfig: the admin credential file a
//! cluster's first server writes (`DATA_DIR/admin.conf`: endpoints, the
//! CA certificate, the admin certificate and key), read from `--config
//! FILE`, else `BERTH_CONFIG`, else `$BERTH_CONFIG_DIR/config` (default
//! `~/.berth/config`).
//!
//! Contexts name several clusters: `berth context import NAME FILE` keeps
//! a credential as `$BERTH_CONFIG_DIR/contexts/NAME.conf`, and `berth
//! context use NAME` makes it the one `config` holds.

use std::path::{Path, PathBuf};

pub use berth_proto::credential::AdminConf;

/// Why the credential could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no berth credential at {0}: copy the admin.conf of the cluster's first server (in its data dir, /var/lib/berth/server/admin.conf by default) there, or name it with --config FILE or BERTH_CONFIG")]
    Missing(String),
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is not a berth credential file: {reason}")]
    Malformed { path: String, reason: String },
    #[error("no context named {0:?} (`berth context ls` lists them)")]
    NoContext(String),
    #[error("a context name is letters, digits, '-', '_' and '.', not {0:?}")]
    BadName(String),
}

/// The directory of the CLI's files: `$BERTH_CONFIG_DIR`, or `~/.berth`.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".berth")
}

/// The credential file to read: `explicit` (--config or BERTH_CONFIG),
/// else `config` in [`config_dir`].
pub fn path(explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(p) => p.to_path_buf(),
        None => config_dir().join("config"),
    }
}

/// Reads a credential file.
pub fn load(path: &Path) -> Result<AdminConf, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Missing(path.display().to_string()))
        }
        Err(e) => {
            return Err(ConfigError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
    };
    let conf: AdminConf = serde_json::from_str(&text).map_err(|e| ConfigError::Malformed {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    for (what, v) in [("ca", &conf.ca), ("cert", &conf.cert), ("key", &conf.key)] {
        if !v.contains("-----BEGIN") {
            return Err(ConfigError::Malformed {
                path: path.display().to_string(),
                reason: format!("its {what} is not PEM"),
            });
        }
    }
    Ok(conf)
}

/// Writes a credential file (0600, in a 0700 directory).
pub fn store(path: &Path, conf: &AdminConf) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    let fail = |e: std::io::Error| ConfigError::Unreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    let text = serde_json::to_string_pretty(conf).map_err(|e| fail(e.into()))?;
    berth_proto::credential::write_private(path, text.as_bytes(), 0o600).map_err(fail)
}

fn contexts_dir() -> PathBuf {
    config_dir().join("contexts")
}

fn context_path(name: &str) -> Result<PathBuf, ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        return Err(ConfigError::BadName(name.to_string()));
    }
    Ok(contexts_dir().join(format!("{name}.conf")))
}

/// `berth context import NAME FILE`: keeps a credential under a name (and
/// makes it the current one if there is none).
pub fn import(name: &str, file: &Path) -> Result<(), ConfigError> {
    let conf = load(file)?;
    store(&context_path(name)?, &conf)?;
    if !path(None).exists() {
        use_context(name)?;
    }
    Ok(())
}

/// `berth context use NAME`: the named credential becomes `config`.
pub fn use_context(name: &str) -> Result<(), ConfigError> {
    let p = context_path(name)?;
    if !p.exists() {
        return Err(ConfigError::NoContext(name.to_string()));
    }
    let conf = load(&p)?;
    store(&path(None), &conf)?;
    let current = config_dir().join("current-context");
    std::fs::write(&current, format!("{name}\n")).map_err(|e| ConfigError::Unreadable {
        path: current.display().to_string(),
        reason: e.to_string(),
    })
}

/// `berth context rm NAME`.
pub fn remove(name: &str) -> Result<(), ConfigError> {
    let p = context_path(name)?;
    std::fs::remove_file(&p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NoContext(name.to_string()),
        _ => ConfigError::Unreadable {
            path: p.display().to_string(),
            reason: e.to_string(),
        },
    })
}

/// The contexts: (name, endpoints, current), by name.
pub fn list() -> Result<Vec<(String, Vec<String>, bool)>, ConfigError> {
    let current = std::fs::read_to_string(config_dir().join("current-context"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(contexts_dir()) {
        Ok(e) => e,
        Err(_) => return Ok(out),
    };
    for e in entries.flatten() {
        let p = e.path();
        let Some(name) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".conf"))
            .map(str::to_string)
        else {
            continue;
        };
        let endpoints = load(&p).map(|c| c.endpoints).unwrap_or_default();
        let is_current = name == current;
        out.push((name, endpoints, is_current));
    }
    out.sort();
    Ok(out)
}
