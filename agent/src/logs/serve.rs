//! Answers the cluster's reads of a container's log from the node's own
//! file: every line from a sequence number on (or the last N), and with
//! `follow` every line to come until the container has ended. The reader
//! goes only as fast as the receiver takes batches.

use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

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

/// Sends the lines `req` asks for to `out`, in batches, in order. A
/// follower looks at the file again after a wait that grows from 2 to
/// 50 ms while nothing comes, and at once when `wake` changes (the node
/// bumps it when a container starts or ends), so that the end of a
/// container is not seen up to 50 ms late.
pub async fn serve(
    dir: &Path,
    req: &ReadLogs,
    out: &mpsc::Sender<Vec<LogLine>>,
    mut wake: watch::Receiver<u64>,
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
            let lines = if req.merge { merge(lines) } else { lines };
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
        // A wake whose sender is gone is never ready again (it would be
        // ready at once, forever): then only the timer wakes the reader.
        let woken = tokio::select! {
            _ = tokio::time::sleep(idle) => false,
            _ = out.closed() => return Ok(()),
            changed = wake.changed(), if wake.has_changed().is_ok() => changed.is_ok(),
        };
        idle = if woken {
            Duration::from_millis(2)
        } else {
            (idle * 2).min(Duration::from_millis(50))
        };
    }
}

/// Joins each run of consecutive lines of one stream into one line,
/// numbered and stamped as the last of the run: for a reader that prints
/// lines as they are, a message a run rather than a line at every hop.
fn merge(lines: Vec<LogLine>) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = Vec::new();
    for l in lines {
        match out.last_mut() {
            Some(run) if run.stream == l.stream && run.seq.checked_add(1) == Some(l.seq) => {
                run.line.extend_from_slice(&l.line);
                run.seq = l.seq;
                run.time_ns = l.time_ns;
            }
            _ => out.push(l),
        }
    }
    out
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
            merge: false,
        }
    }

    #[tokio::test]
    async fn a_merged_read_joins_each_run_of_one_stream_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(bundle::meta(&d), "{}").unwrap();
        let mut f = std::fs::File::create(bundle::log(&d)).unwrap();
        for (seq, stream, text) in [
            (1, "stdout", "a\n"),
            (2, "stdout", "b\n"),
            (3, "stderr", "oops\n"),
            (4, "stdout", "c\n"),
            (5, "stdout", "d"),
        ] {
            use std::io::Write;
            let frame = crate::runtime::frame::Frame::log(seq, stream, seq as i64, text.as_bytes());
            f.write_all(frame.to_line().as_bytes()).unwrap();
        }
        drop(f);
        let (tx, mut rx) = mpsc::channel(4);
        let mut r = req(false, None);
        r.merge = true;
        serve(&d, &r, &tx, quiet()).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend(b);
        }
        let got: Vec<(u64, &str, i64, &[u8])> = got
            .iter()
            .map(|l| (l.seq, l.stream.as_str(), l.time_ns, l.line.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "stdout", 2, &b"a\nb\n"[..]),
                (3, "stderr", 3, &b"oops\n"[..]),
                (5, "stdout", 5, &b"c\nd"[..]),
            ]
        );
    }

    /// A wake that never changes (its sender is gone).
    fn quiet() -> watch::Receiver<u64> {
        watch::channel(0).1
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
        serve(&d, &req(false, None), &tx, quiet()).await.unwrap();
        drop(tx);
        assert_eq!(collect(rx).await, [1, 2, 3, 4, 5]);
        let (tx, rx) = mpsc::channel(1);
        serve(&d, &req(false, Some(2)), &tx, quiet()).await.unwrap();
        drop(tx);
        assert_eq!(collect(rx).await, [4, 5]);
        // Following: lines written later arrive, and the exit ends it.
        let (tx, rx) = mpsc::channel(1);
        let d2 = d.clone();
        let follow = tokio::spawn(async move { serve(&d2, &req(true, None), &tx, quiet()).await });
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
                serve(&dir.path().join("nope"), &req(follow, None), &tx, quiet()).await,
                Err(ServeError::NoSuchContainer("ab".into()))
            );
        }
    }
}
