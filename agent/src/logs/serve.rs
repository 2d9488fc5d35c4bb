//! Answers the cluster's reads of a container's log from the node's own
//! file: every line from a sequence number on (or the last N), and with
//! `follow` every line to come until the container has ended. The reader
//! goes only as fast as the receiver takes batches.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

use super::reader::{next_after_last, LogReader};
use crate::orders::{LogLine, ReadLogs};
use crate::runtime::bundle;

/// Why a read could not be answered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ServeError {
    #[error("No such container on this node: {0}")]
    NoSuchContainer(String),
    #[error("reading the log of {id}: {reason}")]
    Read { id: String, reason: String },
}

/// Sends the lines `req` asks for to `out`, in batches, in order.
pub async fn serve(
    dir: &Path,
    req: &ReadLogs,
    out: &mpsc::Sender<Vec<LogLine>>,
) -> Result<(), ServeError> {
    if !bundle::meta(dir).exists() {
        return Err(ServeError::NoSuchContainer(req.container.clone()));
    }
    let mut from = req.from_seq.max(1);
    if let Some(n) = req.tail {
        let end = next_after_last(dir).unwrap_or(1);
        from = from.max(end.saturating_sub(n).max(1));
    }
    let mut reader = LogReader::open(dir, from);
    let mut idle = Duration::from_millis(2);
    loop {
        // The exit file is written after the last line: seen before an
        // empty read, it means the read has everything.
        let ended = bundle::exit(dir).exists();
        let (lines, r) = tokio::task::spawn_blocking(move || {
            let lines = reader.read(1024, 256 * 1024);
            (lines, reader)
        })
        .await
        .map_err(|e| ServeError::Read {
            id: req.container.clone(),
            reason: e.to_string(),
        })?;
        reader = r;
        let lines = lines.map_err(|e| ServeError::Read {
            id: req.container.clone(),
            reason: e.to_string(),
        })?;
        if !lines.is_empty() {
            if out.send(lines).await.is_err() {
                // The reader went away: nothing more to do.
                return Ok(());
            }
            idle = Duration::from_millis(2);
            continue;
        }
        if !req.follow || ended || !dir.exists() {
            tracing::debug!(id = %req.container, next = reader.next_seq(), "a log read is complete");
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(idle) => {}
            _ = out.closed() => return Ok(()),
        }
        idle = (idle * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(dir: &Path, seqs: std::ops::RangeInclusive<u64>) {
        super::super::reader::append_numbered(&bundle::log(dir), seqs)
    }

    fn req(follow: bool, tail: Option<u64>) -> ReadLogs {
        ReadLogs {
            request_id: 1,
            container: "ab".into(),
            from_seq: 1,
            tail,
            follow,
        }
    }

    async fn collect(mut rx: mpsc::Receiver<Vec<LogLine>>) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(b) = rx.recv().await {
            seqs.extend(b.iter().map(|l| l.seq));
        }
        seqs
    }

    #[tokio::test]
    async fn a_read_returns_every_line_or_the_tail_and_a_follow_ends_with_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(bundle::meta(&d), "{}").unwrap();
        append(&d, 1..=5);
        let (tx, rx) = mpsc::channel(1);
        serve(&d, &req(false, None), &tx).await.unwrap();
        drop(tx);
        assert_eq!(collect(rx).await, [1, 2, 3, 4, 5]);
        let (tx, rx) = mpsc::channel(1);
        serve(&d, &req(false, Some(2)), &tx).await.unwrap();
        drop(tx);
        assert_eq!(collect(rx).await, [4, 5]);
        // Following: lines written later arrive, and the exit ends it.
        let (tx, rx) = mpsc::channel(1);
        let d2 = d.clone();
        let follow = tokio::spawn(async move { serve(&d2, &req(true, None), &tx).await });
        let reading = tokio::spawn(collect(rx));
        append(&d, 6..=7);
        std::fs::write(bundle::exit(&d), "0").unwrap();
        follow.await.unwrap().unwrap();
        assert_eq!(reading.await.unwrap(), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[tokio::test]
    async fn a_read_of_a_container_the_node_lacks_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        for follow in [false, true] {
            assert_eq!(
                serve(&dir.path().join("nope"), &req(follow, None), &tx).await,
                Err(ServeError::NoSuchContainer("ab".into()))
            );
        }
    }
}
