//! The agent's lease on its movable containers (service tasks, `run
//! --reschedule`). The agent renews it each time the leader answers a
//! heartbeat, from when that heartbeat was sent; the shim of every movable
//! container watches it and kills the container once it has run out. So
//! when a node is cut off from the cluster, or its agent has died and left
//! its shims behind, its movable containers stop before the cluster places
//! them elsewhere: the lease is shorter than the server's node TTL plus its
//! reschedule delay, and two copies never run at once.
//!
//! The lease is one file in the agent's data dir holding a deadline in ms
//! of CLOCK_MONOTONIC, which every process of the host shares and no clock
//! change moves.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lease file in an agent's data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("lease")
}

/// The marker a shim leaves in its bundle when the lease stopped the container.
pub const EXPIRED_MARK: &str = "lease-expired";

/// How often a shim looks at the lease.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Now, in ms of CLOCK_MONOTONIC.
pub fn now_ms() -> u64 {
    // clock_gettime(2) with CLOCK_MONOTONIC: shared by every process of
    // the host, never set back; it cannot fail for this clock id.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// The deadline in a lease file; none if it is missing or unreadable
/// (then the lease counts as run out).
pub fn read(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True if the lease at `path` has run out.
pub fn expired(path: &Path) -> bool {
    read(path).is_none_or(|deadline| now_ms() >= deadline)
}

/// Writes a new deadline, whole (a rename), so that a shim never reads
/// half of one.
pub fn write(path: &Path, deadline_ms: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, deadline_ms.to_string())?;
    fs::rename(&tmp, path)
}

/// The agent's side: renews the lease from the send time of each
/// heartbeat the leader answers.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    duration: Duration,
    deadline: std::sync::atomic::AtomicU64,
}

impl Lease {
    pub fn new(data_dir: &Path, duration: Duration) -> Self {
        Self {
            path: path(data_dir),
            duration,
            deadline: std::sync::atomic::AtomicU64::new(read(&path(data_dir)).unwrap_or(0)),
        }
    }

    /// The file the shims watch.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Extends the lease to `sent_ms` (CLOCK_MONOTONIC, when the answered
    /// heartbeat left) plus its duration; never shortens it.
    pub fn renew_from(&self, sent_ms: u64) {
        use std::sync::atomic::Ordering;
        let deadline = sent_ms + self.duration.as_millis() as u64;
        if self.deadline.fetch_max(deadline, Ordering::AcqRel) >= deadline {
            return;
        }
        if let Err(e) = write(&self.path, deadline) {
            tracing::warn!("cannot renew the lease in {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_moves_the_deadline_forward_only_and_a_missing_file_is_expired() {
        let dir = tempfile::tempdir().unwrap();
        assert!(expired(&path(dir.path())), "no lease yet");
        let lease = Lease::new(dir.path(), Duration::from_secs(60));
        let now = now_ms();
        lease.renew_from(now);
        assert_eq!(read(lease.path()), Some(now + 60_000));
        assert!(!expired(lease.path()));
        // An older answer does not shorten it.
        lease.renew_from(now - 30_000);
        assert_eq!(read(lease.path()), Some(now + 60_000));
        write(lease.path(), now.saturating_sub(1)).unwrap();
        assert!(expired(lease.path()));
    }
}
