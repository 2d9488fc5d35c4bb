//! After a (re)registration: resend the log lines the cluster lacks, and
//! follow containers that outlived an earlier agent.

use super::*;

impl Supervisor {
    /// After a (re)registration: resends every log line the cluster has not
    /// committed, and follows the containers that run without a relay (they
    /// outlived an earlier agent) to their end.
    pub async fn resume(self: Arc<Self>, log_next_seq: std::collections::HashMap<String, u64>) {
        for meta in self.local_metas() {
            let Some(&next) = log_next_seq.get(&meta.id) else {
                continue;
            };
            let Some(dir) = self.bundle_dir(&meta.id) else {
                continue;
            };
            let relayed = self.live.lock().await.contains(&meta.id);
            if relayed || self.running_pid(&dir).is_none() {
                let (lines, _) = read_log_from(&dir, next, 0);
                self.send_lines(&meta.id, meta.generation, lines);
                continue;
            }
            if self.live.lock().await.insert(meta.id.clone()) {
                tokio::spawn(self.clone().follow(meta, dir, next));
            }
        }
    }

    pub(super) fn send_lines(&self, id: &str, generation: u64, lines: Vec<LogLine>) {
        for chunk in lines.chunks(CHUNK_LINES) {
            self.send(Report::Logs(LogBatch {
                container: id.to_string(),
                generation,
                lines: chunk.to_vec(),
            }));
        }
    }

    /// Follows a container whose shim this agent did not start: its log
    /// file for new lines, its exit file for the end.
    pub(super) async fn follow(self: Arc<Self>, meta: Meta, dir: PathBuf, mut next: u64) {
        tracing::info!(id = %meta.id, "re-attached to a running container");
        let mut offset = 0u64;
        loop {
            let exited = bundle::exit(&dir).exists();
            let (lines, new_offset) = read_log_from(&dir, next, offset);
            offset = new_offset;
            if let Some(last) = lines.last() {
                next = last.seq + 1;
            }
            self.send_lines(&meta.id, meta.generation, lines);
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let code = fs::read_to_string(bundle::exit(&dir))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(255);
        self.host.unmount_rootfs(&dir);
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

/// Log lines of a bundle's log file from sequence number `from`, reading
/// from byte `offset`; returns them with the offset after the last complete
/// line.
pub fn read_log_from(dir: &Path, from: u64, offset: u64) -> (Vec<LogLine>, u64) {
    use std::io::{BufRead, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(bundle::log(dir)) else {
        return (Vec::new(), offset);
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset);
    }
    let mut reader = std::io::BufReader::new(f);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) if !line.ends_with('\n') => {
                // A line the shim is still writing: read it next time.
                let _ = n;
                break;
            }
            Ok(n) => pos += n as u64,
        }
        if let Ok(Frame::Log {
            seq,
            stream,
            time_ns,
            line,
        }) = serde_json::from_str::<Frame>(line.trim_end())
        {
            if seq >= from {
                out.push(LogLine {
                    seq,
                    stream,
                    time_ns,
                    line: line.into_bytes(),
                });
            }
        }
    }
    (out, pos)
}
