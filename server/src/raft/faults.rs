//! A fault layer in the Raft transport, for the chaos tests: with
//! `BERTH_FAULTS=1` in its environment, a server reads `faults` in its data
//! dir on every Raft message and drops what goes to, or comes from, the
//! member ids it lists (`blocked: 2,3`). Without the variable it does
//! nothing. Partitions are made this way because every server of a test
//! shares one loopback.

use std::path::{Path, PathBuf};

/// Which peers' Raft traffic to drop.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    file: Option<PathBuf>,
}

impl Faults {
    /// The fault layer of a server with this data dir, on only if
    /// `BERTH_FAULTS=1`.
    pub fn from_env(data_dir: &Path) -> Self {
        let on = std::env::var("BERTH_FAULTS").as_deref() == Ok("1");
        Self {
            file: on.then(|| data_dir.join("faults")),
        }
    }

    /// True if traffic with `peer` is to be dropped now.
    pub fn blocked(&self, peer: u64) -> bool {
        let Some(file) = &self.file else { return false };
        let Ok(text) = std::fs::read_to_string(file) else {
            return false;
        };
        text.lines()
            .filter_map(|l| l.strip_prefix("blocked:"))
            .flat_map(|ids| ids.split(','))
            .filter_map(|id| id.trim().parse::<u64>().ok())
            .any(|id| id == peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_peers_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = Faults {
            file: Some(dir.path().join("faults")),
        };
        assert!(!f.blocked(2));
        std::fs::write(dir.path().join("faults"), "blocked: 2, 3\n").unwrap();
        assert!(f.blocked(2) && f.blocked(3) && !f.blocked(1));
        assert!(!Faults::default().blocked(2));
    }
}
