//! A server's member id, kept in its data dir (`server-id`) from its first
//! start on: later starts need no `--id`, and an `--id` that contradicts
//! the data dir is refused, so that a restarted server never comes back
//! as another member.

use std::path::{Path, PathBuf};

/// Why the server's id could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum MemberIdError {
    #[error(
        "{dir} belongs to server {stored}; --id {flag} contradicts it \
         (start without --id, or give another --data-dir)"
    )]
    Conflict { dir: String, stored: u64, flag: u64 },
    #[error(
        "{0} holds a Raft store but no server-id file (it was made before \
         ids were kept): start it once with its --id"
    )]
    Unrecorded(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("--id 0 is not an id (ids start at 1)")]
    Zero,
}

/// Where the id is kept.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("server-id")
}

/// What a start knows of its id before it reaches the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// From the data dir or from --id.
    Id(u64),
    /// Neither: a fresh data dir joining a cluster asks it for one.
    AskTheCluster,
}

/// Settles the id from the data dir and the `--id` flag.
pub fn resolve(data_dir: &Path, flag: Option<u64>) -> Result<Known, MemberIdError> {
    if flag == Some(0) {
        return Err(MemberIdError::Zero);
    }
    match (read(data_dir)?, flag) {
        (Some(stored), Some(flag)) if stored != flag => Err(MemberIdError::Conflict {
            dir: data_dir.display().to_string(),
            stored,
            flag,
        }),
        (Some(stored), _) => Ok(Known::Id(stored)),
        (None, Some(flag)) => Ok(Known::Id(flag)),
        (None, None) if data_dir.join("raft").exists() => {
            Err(MemberIdError::Unrecorded(data_dir.display().to_string()))
        }
        (None, None) => Ok(Known::AskTheCluster),
    }
}

/// The id the data dir records, if any.
pub fn read(data_dir: &Path) -> Result<Option<u64>, MemberIdError> {
    let p = path(data_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| MemberIdError::File {
                path: p.display().to_string(),
                reason: format!("not a server id: {:?}", text.trim()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MemberIdError::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Records the id in the data dir, durably (a new file, synced, renamed
/// into place).
pub fn store(data_dir: &Path, id: u64) -> Result<(), MemberIdError> {
    let p = path(data_dir);
    let err = |e: std::io::Error| MemberIdError::File {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(err)?;
    crate::files::write_synced(&p, format!("{id}\n").as_bytes(), 0o644).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_keeps_the_id_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(resolve(d, None).unwrap(), Known::AskTheCluster);
        assert_eq!(resolve(d, Some(3)).unwrap(), Known::Id(3));
        store(d, 3).unwrap();
        assert_eq!(resolve(d, None).unwrap(), Known::Id(3));
        assert_eq!(resolve(d, Some(3)).unwrap(), Known::Id(3));
        let err = resolve(d, Some(1)).unwrap_err().to_string();
        assert!(
            err.contains("belongs to server 3; --id 1 contradicts it"),
            "{err}"
        );
        assert!(matches!(resolve(d, Some(0)), Err(MemberIdError::Zero)));
        std::fs::write(path(d), "x").unwrap();
        assert!(matches!(resolve(d, None), Err(MemberIdError::File { .. })));
        // A store made before ids were kept needs its --id once.
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir(old.path().join("raft")).unwrap();
        assert!(matches!(
            resolve(old.path(), None),
            Err(MemberIdError::Unrecorded(_))
        ));
    }
}
