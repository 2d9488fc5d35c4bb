//! Deletion of removed bundles off the removal's path: a removal moves the
//! bundle into the trash directory (a rename on the same filesystem, so
//! the container is gone from `containers/` at once) and answers; one
//! thread under SCHED_IDLE deletes what the trash holds, in CPU time
//! nothing else wants. A bundle's files took about 1.2 ms to delete here
//! (some 20 unlinks on ext4 with online discard), all of it on the path of
//! every `berth rm` and `run --rm`. What the container wrote (its upper
//! and work dirs) is deleted by the removal itself, which fails if it
//! cannot: only the agent's own files are left to the trash.
//!
//! At most [`MAX_PENDING`] bundles wait: on a host too busy to give the
//! thread its turn, a removal deletes in place again, so the trash cannot
//! grow without bound. What an agent that stopped left in the trash is
//! deleted when the next one opens the data dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

/// The trash directory's name in the agent's data dir.
pub const DIR: &str = "removed";

/// The most bundles waiting for their deletion.
pub const MAX_PENDING: usize = 8;

/// Why a bundle was not taken.
#[derive(Debug, thiserror::Error)]
pub enum TrashError {
    #[error("{MAX_PENDING} removed bundles are waiting for their deletion already")]
    Full,
    #[error("moving {path} into the trash: {source}")]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The trash of one data dir and the thread that empties it.
pub struct Trash {
    dir: PathBuf,
    tx: mpsc::Sender<PathBuf>,
    /// Makes the names in the trash unique.
    next: AtomicU64,
    /// Bundles taken and not yet deleted.
    pending: Arc<AtomicUsize>,
}

impl Trash {
    /// Opens (or makes) the trash under `data_dir` and starts the thread
    /// that deletes its contents, beginning with what is already there.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join(DIR);
        fs::create_dir_all(&dir)?;
        super::private_dir(&dir)?;
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let pending = Arc::new(AtomicUsize::new(0));
        for e in fs::read_dir(&dir)?.flatten() {
            pending.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(e.path());
        }
        let left = pending.clone();
        std::thread::Builder::new()
            .name("trash".into())
            .spawn(move || empty(rx, &left))?;
        Ok(Self {
            dir,
            tx,
            next: AtomicU64::new(0),
            pending,
        })
    }

    /// Moves `bundle` into the trash, to be deleted later. On an error the
    /// bundle is where it was, and the caller deletes it in place.
    pub fn take(&self, bundle: &Path) -> Result<(), TrashError> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(TrashError::Full);
        }
        let name = bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let to = self.dir.join(format!("{name}.{}.{n}", std::process::id()));
        if let Err(source) = fs::rename(bundle, &to) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(TrashError::Rename {
                path: bundle.to_path_buf(),
                source,
            });
        }
        let _ = self.tx.send(to);
        Ok(())
    }
}

/// The trash thread: deletes each path it is sent, until the trash is
/// dropped.
fn empty(rx: mpsc::Receiver<PathBuf>, pending: &AtomicUsize) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param for the length of
    // the call; pid 0 is this thread. Deletion runs only in CPU time no
    // normal task wants; if the policy cannot be set it runs as it is.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    for path in rx {
        if let Err(e) = fs::remove_dir_all(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "cannot delete a removed bundle: {e}");
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_bundle_taken_is_gone_at_once_and_deleted_later() {
        let data = tempfile::tempdir().unwrap();
        let bundle = data.path().join("containers").join("abc");
        fs::create_dir_all(bundle.join("upper/etc")).unwrap();
        fs::write(bundle.join("upper/etc/passwd"), "x").unwrap();
        let trash = Trash::open(data.path()).unwrap();
        trash.take(&bundle).unwrap();
        assert!(!bundle.exists());
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_dir(data.path().join(DIR)).unwrap().count() > 0 {
            assert!(Instant::now() < deadline, "the trash was not emptied");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_full_trash_refuses_and_leaves_the_bundle_in_place() {
        let data = tempfile::tempdir().unwrap();
        let trash = Trash::open(data.path()).unwrap();
        // As if the thread had not had its turn for MAX_PENDING bundles.
        trash.pending.store(MAX_PENDING, Ordering::Release);
        let bundle = data.path().join("containers").join("abc");
        fs::create_dir_all(&bundle).unwrap();
        assert!(matches!(trash.take(&bundle), Err(TrashError::Full)));
        assert!(bundle.exists());
        assert_eq!(trash.pending.load(Ordering::Acquire), MAX_PENDING);
    }

    #[test]
    fn what_an_earlier_agent_left_in_the_trash_is_deleted() {
        let data = tempfile::tempdir().unwrap();
        let left = data.path().join(DIR).join("abc.1.0");
        fs::create_dir_all(left.join("rootfs")).unwrap();
        let _trash = Trash::open(data.path()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while left.exists() {
            assert!(Instant::now() < deadline, "the left bundle was not deleted");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
