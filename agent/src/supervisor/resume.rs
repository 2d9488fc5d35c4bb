//! After a (re)registration: ship the log lines the cluster lacks, and
//! follow containers that outlived an earlier agent.

use super::*;

impl Supervisor {
    /// After a (re)registration: every container the cluster places here
    /// ships its log from the first line the cluster lacks, and the ones
    /// that run without a relay (they outlived an earlier agent) are
    /// followed to their end.
    pub async fn resume(self: Arc<Self>, log_next_seq: std::collections::HashMap<String, u64>) {
        self.shippers.rewind_all(&log_next_seq);
        for meta in self.local_metas() {
            let Some(&next) = log_next_seq.get(&meta.id) else {
                continue;
            };
            let Some(dir) = self.bundle_dir(&meta.id) else {
                continue;
            };
            self.shippers.start(&meta.id, meta.generation, &dir, next);
            let relayed = self.live.lock().await.contains(&meta.id);
            if relayed || !self.running(&dir) {
                continue;
            }
            if self.live.lock().await.insert(meta.id.clone()) {
                tokio::spawn(self.clone().follow(meta, dir));
            }
        }
    }

    /// Follows a container whose shim this agent did not start until its
    /// exit file appears, then reports the exit (its log is shipped from
    /// the file like any other).
    pub(super) async fn follow(self: Arc<Self>, meta: Meta, dir: PathBuf) {
        tracing::info!(id = %meta.id, "re-attached to a running container");
        let mut idle = Duration::from_millis(10);
        while !bundle::exit(&dir).exists() && dir.exists() {
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(100));
        }
        let code = fs::read_to_string(bundle::exit(&dir))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(255);
        self.host.unmount_rootfs(&dir);
        self.ship(&meta.id, meta.generation, &dir);
        self.exited(
            &meta.id,
            meta.generation,
            code,
            None,
            dir.join("oom").exists(),
        );
        self.live.lock().await.remove(&meta.id);
    }
}
