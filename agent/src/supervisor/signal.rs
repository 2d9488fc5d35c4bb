//! Signals to a running container: stop (its stop signal, SIGKILL after
//! the grace period), kill, and pause and unpause through the freezer.

use super::*;

impl Supervisor {
    /// Sends a signal to a running container's first process.
    pub(super) fn signal(&self, id: &str, signal: i32) {
        let Some(dir) = self.bundle_dir(id) else {
            return;
        };
        if !self.running(&dir) {
            tracing::info!(%id, "signal for a container that does not run");
            return;
        }
        let Ok(sig) = nix::sys::signal::Signal::try_from(signal) else {
            tracing::warn!(%id, signal, "not a signal");
            return;
        };
        if let Err(e) = self.host.kill(&dir, sig) {
            tracing::warn!(%id, "{e}");
        }
    }

    /// Pauses (freezes) or unpauses a running container through its
    /// cgroup's freezer, and reports the new state.
    pub(super) fn freeze(&self, a: &Assignment, frozen: bool) {
        let Some(dir) = self.bundle_dir(&a.container) else {
            return;
        };
        if !self.running(&dir) {
            return;
        }
        match self.host.freeze(&a.container, frozen) {
            Ok(()) => self.transition(
                &a.container,
                a.generation,
                if frozen {
                    ContainerState::Paused
                } else {
                    ContainerState::Running
                },
            ),
            Err(e) => tracing::warn!(id = %a.container, "freezer: {e}"),
        }
    }

    /// Sends the stop signal, then SIGKILL once the grace period is over.
    pub(super) async fn stop(&self, a: &Assignment, signal: Option<i32>, grace: Duration) {
        let Some(dir) = self.bundle_dir(&a.container) else {
            return;
        };
        // Stopped by a user: no restart policy brings it back.
        let _ = fs::write(dir.join(STOPPED_MARK), "");
        let signal = signal.unwrap_or_else(|| {
            read_meta(&dir)
                .and_then(|m| m.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM as i32)
        });
        // A frozen container cannot act on a signal: thaw it first.
        if self.running(&dir) {
            let _ = self.host.freeze(&a.container, false);
        }
        self.signal(&a.container, signal);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if !self.running(&dir) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.running(&dir) {
            tracing::info!(id = %a.container, "grace period over; sending SIGKILL");
            self.signal(&a.container, nix::sys::signal::Signal::SIGKILL as i32);
        }
    }
}
