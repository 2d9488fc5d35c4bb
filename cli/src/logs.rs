//! Printing a container's log: `berth logs` and an attached `berth run`.
//! Every line carries its sequence number; when the stream breaks (a
//! leader change, a server restart) the CLI connects again and asks from
//! the line after the last it printed, so that nothing is missed or
//! printed twice. Output is written in blocks and flushed whenever the
//! stream pauses.

use std::io::Write;
use std::time::{Duration, Instant};

use berth_proto::cluster::{cluster_client::ClusterClient, LogEntry, LogsRequest};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::{connect, CliError};

/// How `logs` prints.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub timestamps: bool,
    pub tail: Option<u64>,
    /// Only lines at or after, and at or before, these times (ns).
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
}

/// How long the CLI tries to get its stream back after it broke.
const RESUME_FOR: Duration = Duration::from_secs(30);

/// Prints the container's lines to stdout and stderr by stream, resuming
/// after a broken stream from the line after the last printed.
pub async fn print(
    client: &mut ClusterClient<Channel>,
    id: &str,
    opts: &LogOptions,
) -> Result<(), CliError> {
    print_each(client, vec![(id.to_string(), String::new())], opts).await
}

/// Prints the lines of every task of a service as they come, each after
/// its task's `NAME.N@NODE |`, as `docker service logs` does.
pub async fn print_service(
    client: &mut ClusterClient<Channel>,
    tasks: Vec<(String, String)>,
    opts: &LogOptions,
) -> Result<(), CliError> {
    let width = tasks.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    let tasks = tasks
        .into_iter()
        .map(|(id, p)| (id, format!("{p:<width$} | ")))
        .collect();
    print_each(client, tasks, opts).await
}

/// Prints the lines of each container `(id, prefix)` as they come, each
/// after its prefix.
async fn print_each(
    client: &mut ClusterClient<Channel>,
    containers: Vec<(String, String)>,
    opts: &LogOptions,
) -> Result<(), CliError> {
    // Batches as they came from the cluster: a send per batch, not a line.
    let (tx, rx) = mpsc::channel::<(usize, Vec<LogEntry>)>(16);
    let mut prefixes = Vec::new();
    let mut readers = Vec::new();
    for (i, (id, prefix)) in containers.into_iter().enumerate() {
        // Lines printed as they are may come joined, a message a batch.
        let merge = prefix.is_empty()
            && !opts.timestamps
            && opts.since_ns.is_none()
            && opts.until_ns.is_none();
        prefixes.push(prefix);
        readers.push(tokio::spawn(entries(
            client.clone(),
            id,
            opts.clone(),
            Reading { tag: i, merge },
            tx.clone(),
        )));
    }
    drop(tx);
    print_tagged(rx, opts.timestamps, &prefixes).await;
    for r in readers {
        r.await
            .map_err(|e| CliError::Api(format!("reading the log: {e}")))??;
    }
    Ok(())
}

async fn print_tagged(
    mut rx: mpsc::Receiver<(usize, Vec<LogEntry>)>,
    timestamps: bool,
    prefixes: &[String],
) {
    let mut out = Printer::new(timestamps);
    loop {
        // Flush only when nothing more is ready: blocks, not lines.
        let (i, batch) = match rx.try_recv() {
            Ok(x) => x,
            Err(mpsc::error::TryRecvError::Empty) => {
                out.flush();
                match rx.recv().await {
                    Some(x) => x,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let prefix = prefixes.get(i).map(String::as_str).unwrap_or_default();
        // A closed pipe on our side (berth logs | head) ends quietly.
        if !batch.iter().all(|e| out.line(e, prefix)) {
            break;
        }
    }
    out.flush();
}

/// How one container's lines are asked for.
struct Reading {
    /// What its lines are tagged with on the printer's channel.
    tag: usize,
    /// Whether the cluster may join consecutive lines of one stream.
    merge: bool,
}

/// Streams a container's lines into `tx`, in order, each once and tagged
/// as `reading` says: when the stream breaks it connects again and asks
/// from the line after the last.
async fn entries(
    mut client: ClusterClient<Channel>,
    id: String,
    opts: LogOptions,
    reading: Reading,
    tx: mpsc::Sender<(usize, Vec<LogEntry>)>,
) -> Result<(), CliError> {
    let tag = reading.tag;
    let mut next: Option<u64> = None;
    let mut broken_since: Option<Instant> = None;
    loop {
        let req = LogsRequest {
            name_or_id: id.clone(),
            follow: opts.follow,
            // After the first line, the position replaces the tail.
            tail: if next.is_some() { None } else { opts.tail },
            from_seq: next,
            since_ns: opts.since_ns,
            until_ns: opts.until_ns,
            merge_lines: reading.merge,
        };
        let result = async {
            let mut stream = client.logs(req).await?.into_inner();
            while let Some(batch) = stream.message().await? {
                broken_since = None;
                if !batch.notice.is_empty() {
                    eprintln!("berth: {}", batch.notice);
                }
                if let Some(last) = batch.entries.last() {
                    next = Some(last.seq + 1);
                    if tx.send((tag, batch.entries)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok::<(), tonic::Status>(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(s) if resumable(&s) => {
                let since = *broken_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RESUME_FOR {
                    return Err(CliError::api(s));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(c) = connect::reconnect().await {
                    client = c;
                }
            }
            Err(s) => return Err(CliError::api(s)),
        }
    }
}

/// True for a stream that broke on the way (the server went away or
/// stepped down), not one the cluster refused.
pub fn resumable(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(s.code(), Unavailable | Unknown | Cancelled | Aborted)
        || (s.code() == Internal && s.message().contains("h2 protocol error"))
}

/// Writes lines to stdout or stderr through buffers of their own.
struct Printer {
    timestamps: bool,
    stdout: std::io::BufWriter<std::io::Stdout>,
    stderr: std::io::BufWriter<std::io::Stderr>,
    /// The stream written last: switching streams flushes the other, so
    /// that a terminal shows them in their order.
    last_err: bool,
}

impl Printer {
    fn new(timestamps: bool) -> Self {
        Self {
            timestamps,
            stdout: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            stderr: std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()),
            last_err: false,
        }
    }

    fn line(&mut self, e: &LogEntry, prefix: &str) -> bool {
        let is_err = e.stream == "stderr";
        if is_err != self.last_err {
            self.flush();
            self.last_err = is_err;
        }
        let w: &mut dyn Write = if is_err {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let stamp = self.timestamps.then(|| {
            crate::output::utc_time(
                e.time_ns.div_euclid(1_000_000_000),
                &format!("{:09}", e.time_ns.rem_euclid(1_000_000_000)),
            )
        });
        let res = w.write_all(prefix.as_bytes()).and_then(|_| match stamp {
            Some(t) => w
                .write_all(t.as_bytes())
                .and_then(|_| w.write_all(b" "))
                .and_then(|_| w.write_all(&e.line)),
            None => w.write_all(&e.line),
        });
        res.is_ok()
    }

    fn flush(&mut self) {
        let _ = self.stdout.flush();
        let _ = self.stderr.flush();
    }
}

/// Parses a --since or --until value as Docker does: an RFC 3339 time,
/// Unix seconds (with an optional fraction), or a duration before `now`
/// such as 1h30m, 42m or 10s. Returns nanoseconds since the Unix epoch.
pub fn parse_time(s: &str, now_ns: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| format!("time {s:?} is out of range"));
    }
    if let Some((secs, frac)) = s.split_once('.').or(Some((s, ""))) {
        if !secs.is_empty()
            && secs.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
            && frac.len() <= 9
        {
            let whole: i64 = secs
                .parse()
                .map_err(|_| format!("time {s:?} is out of range"))?;
            let frac_ns: i64 = format!("{frac:0<9}").parse().unwrap_or(0);
            return whole
                .checked_mul(1_000_000_000)
                .and_then(|n| n.checked_add(frac_ns))
                .ok_or_else(|| format!("time {s:?} is out of range"));
        }
    }
    parse_duration(s)
        .map(|d| now_ns - d)
        .ok_or_else(|| {
            format!(
                "invalid time {s:?}: use an RFC 3339 time (2026-01-02T15:04:05Z), Unix seconds, or a duration such as 1h30m"
            )
        })
}

/// A Go-style duration (1h30m, 42m, 10s, 250ms) in nanoseconds.
fn parse_duration(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add((n * unit) as i64)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_docker_reads_them() {
        let now = 1_000_000 * 1_000_000_000i64;
        assert_eq!(
            parse_time("2026-01-02T15:04:05Z", now),
            Ok(1_767_366_245_000_000_000)
        );
        assert_eq!(parse_time("1767366245", now), Ok(1_767_366_245_000_000_000));
        assert_eq!(
            parse_time("1767366245.5", now),
            Ok(1_767_366_245_500_000_000)
        );
        assert_eq!(parse_time("1h30m", now), Ok(now - 5_400_000_000_000));
        assert_eq!(parse_time("42m", now), Ok(now - 2_520_000_000_000));
        assert_eq!(parse_time("250ms", now), Ok(now - 250_000_000));
        let err = parse_time("yesterday", now).unwrap_err();
        assert!(
            err.contains("\"yesterday\"") && err.contains("1h30m"),
            "{err}"
        );
        assert!(parse_time("10x", now).is_err());
        assert!(parse_time("", now).is_err());
    }
}
