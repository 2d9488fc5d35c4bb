//! Signals to a running container: stop (its stop signal, SIGKILL after
//! the grace period), kill, and pause and unpause through the freezer.

use super::*;

impl Supervisor {
    /// Sends a signal to a running container's first process.
    pub(super) fn signal(&self, id: &str, signal: i32) {
        let Some(dir) = self.bundle_dir(id) else {
            return;
        };
        let Some(pid) = self.running_pid(&dir) else {
            tracing::info!(%id, "signal for a container that does not run");
            return;
        };
        let Ok(sig) = nix::sys::signal::Signal::try_from(signal) else {
            tracing::warn!(%id, signal, "not a signal");
            return;
        };
        // kill(2) to the container's init: from outside its pid namespace
        // the signal arrives if init handles it (SIGKILL always does).
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            tracing::warn!(%id, "kill({pid}, {sig}): {e}");
        }
    }

    /// Pauses (freezes) or unpauses a running container through its
    /// cgroup's freezer, and reports the new state.
    pub(super) fn freeze(&self, a: &Assign, frozen: bool) {
        let Some(dir) = self.bundle_dir(&a.container_id) else {
            return;
        };
        if self.running_pid(&dir).is_none() {
            return;
        }
        let cg = Cgroup::new(
            Layout::detect(Path::new(CGROUP_ROOT)),
            &cgroup_of(&a.container_id),
        );
        match cg.freeze(frozen) {
            Ok(()) => self.transition(
                &a.container_id,
                a.generation,
                if frozen { "paused" } else { "running" },
                0,
                String::new(),
                String::new(),
            ),
            Err(e) => tracing::warn!(id = %a.container_id, "freezer: {e}"),
        }
    }

    /// Sends the stop signal, then SIGKILL once the grace period is over.
    pub(super) async fn stop(&self, a: &Assign) {
        let Some(dir) = self.bundle_dir(&a.container_id) else {
            return;
        };
        // Stopped by a user: no restart policy brings it back.
        let _ = fs::write(dir.join(STOPPED_MARK), "");
        let meta = read_meta(&dir);
        let signal = if a.signal != 0 {
            a.signal
        } else {
            meta.as_ref()
                .and_then(|m| m.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM as i32)
        };
        // A frozen container cannot act on a signal: thaw it first.
        let _ = Cgroup::new(
            Layout::detect(Path::new(CGROUP_ROOT)),
            &cgroup_of(&a.container_id),
        )
        .freeze(false);
        self.signal(&a.container_id, signal);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_s as u64);
        while tokio::time::Instant::now() < deadline {
            if self.running_pid(&dir).is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.running_pid(&dir).is_some() {
            tracing::info!(id = %a.container_id, "grace period over; sending SIGKILL");
            self.signal(&a.container_id, nix::sys::signal::Signal::SIGKILL as i32);
        }
    }
}
