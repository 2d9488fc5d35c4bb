//! Removal: kill the container if it runs and delete its bundle, one
//! removal of a container at a time; and the stale copies the leader names
//! at registration.

use super::*;

impl Supervisor {
    /// Kills the container if it runs and deletes its bundle; the error
    /// says what could not be done.
    pub(super) async fn remove(&self, id: &str) -> Result<(), String> {
        let Some(dir) = self.bundle_dir(id) else {
            return Ok(());
        };
        // One removal of a container at a time: a second one (the cluster's
        // --rm beside the client's) waits for the first, then finds nothing.
        let lock = {
            let mut locks = self.removals.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        let _removing = lock.lock().await;
        let result = self.remove_locked(id, &dir).await;
        self.removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        result
    }

    pub(super) async fn remove_locked(&self, id: &str, dir: &Path) -> Result<(), String> {
        let dir = dir.to_path_buf();
        if !dir.exists() {
            return Ok(());
        }
        // No restart policy brings back what is being removed.
        let _ = fs::write(dir.join(STOPPED_MARK), "");
        if !bundle::exit(&dir).exists() && self.host.alive(&dir) {
            let _ = self.host.freeze(id, false);
            // SIGKILL to the container's init ends its whole pid
            // namespace.
            let _ = self.host.kill(&dir, nix::sys::signal::Signal::SIGKILL);
            // Its shim records the exit; a process whose shim is gone
            // is only reaped.
            let gone = |dir: &Path| bundle::exit(dir).exists() || !self.host.alive(dir);
            for _ in 0..250 {
                if gone(&dir) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !gone(&dir) {
                return Err(format!(
                    "cannot remove container {id}: its process did not die within 5 s of SIGKILL"
                ));
            }
        }
        self.shippers.stop(id);
        self.host.unmount_rootfs(&dir);
        // What the container wrote is deleted here: a removal that cannot
        // delete it fails, and the container is Dead (Docker's "unable to
        // remove filesystem"). The agent's own files of the bundle go to
        // the trash and are deleted off this path.
        for part in [bundle::upper(&dir), bundle::work(&dir)] {
            match fs::remove_dir_all(&part) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "unable to remove filesystem for {id}: {}: {e}",
                        part.display()
                    ))
                }
            }
        }
        if self.trash.take(&dir).is_ok() {
            return Ok(());
        }
        // A shipper that was recording its position as it stopped may put
        // a file back in the directory: a second pass takes it.
        let mut attempt = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "unable to remove filesystem for {id}: {}: {e}",
                        dir.display()
                    ))
                }
            }
        }
    }

    /// After a (re)registration, before anything else: stops and deletes
    /// the local copies the cluster no longer places here (removed, moved,
    /// or placed here again at a newer generation).
    pub async fn remove_stale(&self, stale: Vec<LocalCopy>) {
        for l in stale {
            let Some(dir) = self.bundle_dir(&l.container) else {
                continue;
            };
            // A copy newer than the stale one named is not this one.
            if read_meta(&dir).is_some_and(|m| m.generation > l.generation) {
                continue;
            }
            tracing::info!(id = %l.container, generation = l.generation, "removing a stale copy");
            match self.remove(&l.container).await {
                Ok(()) => self.generations.forget(&l.container),
                Err(e) => tracing::warn!(id = %l.container, "cannot remove a stale copy: {e}"),
            }
        }
    }
}
