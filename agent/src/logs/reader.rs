//! Reads a container's log back by sequence number: the bundle's log file
//! and its rotations (`log.jsonl.N` oldest ... `log.jsonl.1`, then
//! `log.jsonl`), followed across a rotation by the file's identity (its
//! inode), never by its name alone.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::orders::LogLine;
use crate::runtime::bundle;
#[cfg(test)]
use crate::runtime::frame::Frame;
use crate::runtime::frame::LogRecord;

/// The most rotated files looked for.
const MAX_ROTATIONS: u32 = 1000;

/// A reader of one container's log lines, from a sequence number on.
pub struct LogReader {
    dir: PathBuf,
    /// The file being read, its inode, and where the next line starts.
    file: Option<(BufReader<File>, u64)>,
    /// The next sequence number wanted.
    next: u64,
    line: Vec<u8>,
}

impl LogReader {
    /// A reader of the lines of the bundle `dir` from sequence `from` on.
    pub fn open(dir: &Path, from: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            file: None,
            next: from.max(1),
            line: Vec::new(),
        }
    }

    /// The next sequence number this reader will return.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Starts again from sequence `from` (an earlier one, when the cluster
    /// asks for lines again).
    pub fn rewind(&mut self, from: u64) {
        self.file = None;
        self.next = from.max(1);
    }

    /// The next lines, up to `max_lines` lines and about `max_bytes` bytes;
    /// none at the current end of the log. A line the shim is still
    /// writing is left for a later call.
    pub fn read(&mut self, max_lines: usize, max_bytes: usize) -> std::io::Result<Vec<LogLine>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if self.file.is_none() && !self.position()? {
            return Ok(out);
        }
        // Set once a newer file is seen after this one: the shim writes no
        // more to a rotated file, so one more read of it finds all it has.
        let mut successor: Option<PathBuf> = None;
        while out.len() < max_lines && bytes < max_bytes {
            let Some((reader, ino)) = self.file.as_mut() else {
                break;
            };
            self.line.clear();
            let n = reader.read_until(b'\n', &mut self.line)?;
            if n == 0 || !self.line.ends_with(b"\n") {
                // Take back a partial line: it is read whole next time.
                if n > 0 {
                    reader.seek_relative(-(n as i64))?;
                }
                if let Some(newer) = successor.take() {
                    self.file = open(&newer)?;
                    continue;
                }
                // At the end of this file: a newer one follows it if it
                // was rotated.
                let ino = *ino;
                let all = files(&self.dir);
                match all.iter().position(|(_, i)| *i == ino) {
                    Some(p) if p + 1 < all.len() => {
                        successor = Some(all[p + 1].0.clone());
                        continue;
                    }
                    Some(_) => break,
                    // Rotated away altogether: find our place again.
                    None => {
                        if !self.position()? {
                            break;
                        }
                        continue;
                    }
                }
            }
            let Some(rec) = LogRecord::parse(&self.line) else {
                continue;
            };
            if rec.seq < self.next {
                continue;
            }
            self.next = rec.seq.saturating_add(1);
            let (seq, time_ns, stream) = (rec.seq, rec.time_ns, rec.stream.to_string());
            let line = rec.into_bytes();
            bytes += line.len() + 32;
            out.push(LogLine {
                seq,
                stream,
                time_ns,
                line,
            });
        }
        Ok(out)
    }

    /// Opens the file that holds `self.next` (the oldest there is if it was
    /// rotated away); false if there is no log yet.
    fn position(&mut self) -> std::io::Result<bool> {
        let all = files(&self.dir);
        // The newest file whose first line is at or before the one wanted.
        let mut pick = None;
        for (path, _) in all.iter().rev() {
            match first_seq(path) {
                Some(first) if first <= self.next => {
                    pick = Some(path.clone());
                    break;
                }
                _ => pick = Some(path.clone()),
            }
        }
        match pick {
            Some(p) => {
                self.file = open(&p)?;
                if let Some((reader, _)) = self.file.as_mut() {
                    // Straight to the line wanted, not through every line
                    // before it: after each registration every shipper
                    // starts again from where the cluster stands, often
                    // the end of a log of many MiB.
                    let at = offset_of(reader.get_ref(), self.next)?;
                    reader.seek(SeekFrom::Start(at))?;
                }
                Ok(self.file.is_some())
            }
            None => Ok(false),
        }
    }
}

/// Below this many bytes, the search for a line ends and the reader reads
/// on line by line.
const SCAN: u64 = 64 * 1024;

/// Where in a log file to start reading for the first line numbered
/// `want` or later: a line start at or before it, found by bisection over
/// the file's bytes (the lines of one file are numbered in order), with
/// at most [`SCAN`] bytes of lines before it left to skip. A line that
/// does not parse counts as being at or past `want`, so that the search
/// can only stop early, never late.
fn offset_of(file: &File, want: u64) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    // `lo` is 0 or the start of a line numbered below `want`; the first
    // line at or past `want` starts at or before `hi`.
    let (mut lo, mut hi) = (0u64, len);
    let mut line = Vec::new();
    while hi - lo > SCAN {
        // The first line that starts at or after a probe between the two;
        // halved towards `lo` while a long line covers the probe.
        let mut mid = lo + (hi - lo) / 2;
        let start = loop {
            match line_from(file, mid, &mut line)? {
                Some(s) if s < hi => break Some(s),
                _ if mid - lo <= SCAN => break None,
                _ => mid = lo + (mid - lo) / 2,
            }
        };
        let Some(s) = start else {
            break;
        };
        match seq_of(&line) {
            Some(seq) if seq < want => lo = s,
            _ => hi = s,
        }
    }
    Ok(lo)
}

/// The first line that begins at or after `at` (greater than zero), into
/// `line`, and where it starts: just past the first newline from `at - 1`
/// on. None if no newline follows `at - 1`.
fn line_from(file: &File, at: u64, line: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
    line.clear();
    let mut r = BufReader::with_capacity(8192, file);
    r.seek(SeekFrom::Start(at - 1))?;
    let skipped = r.read_until(b'\n', line)?;
    if !line.ends_with(b"\n") {
        return Ok(None);
    }
    line.clear();
    r.read_until(b'\n', line)?;
    Ok(Some(at - 1 + skipped as u64))
}

/// The sequence number after the last complete line of the log, or
/// `None` if it has no line yet.
pub fn next_after_last(dir: &Path) -> Option<u64> {
    for (path, _) in files(dir).iter().rev() {
        if let Some(last) = last_seq(path) {
            return Some(last + 1);
        }
    }
    None
}

/// The log files of a bundle, oldest first, with their inodes.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut n = 1;
    while n <= MAX_ROTATIONS {
        let p = bundle::rotated_log(dir, n);
        match std::fs::metadata(&p) {
            Ok(m) => out.push((p, m.ino())),
            Err(_) => break,
        }
        n += 1;
    }
    out.reverse();
    let current = bundle::log(dir);
    if let Ok(m) = std::fs::metadata(&current) {
        out.push((current, m.ino()));
    }
    out
}

fn open(path: &Path) -> std::io::Result<Option<(BufReader<File>, u64)>> {
    match File::open(path) {
        Ok(f) => {
            let ino = f.metadata()?.ino();
            Ok(Some((BufReader::with_capacity(256 * 1024, f), ino)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn seq_of(line: &[u8]) -> Option<u64> {
    LogRecord::parse(line).map(|r| r.seq)
}

fn first_seq(path: &Path) -> Option<u64> {
    let f = File::open(path).ok()?;
    let mut line = Vec::new();
    BufReader::new(f).read_until(b'\n', &mut line).ok()?;
    seq_of(&line)
}

/// The last complete line's sequence number, from the file's end.
fn last_seq(path: &Path) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    // Lines are at most 16 KiB of output, which JSON (or base64) makes at
    // most about 100 KiB; read back until one whole line is in view.
    let mut back = 128 * 1024u64;
    loop {
        let start = len.saturating_sub(back);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        f.by_ref().take(len - start).read_to_end(&mut tail).ok()?;
        let complete = match tail.iter().rposition(|b| *b == b'\n') {
            Some(end) => &tail[..end],
            None if start == 0 => return None,
            None => {
                back *= 2;
                continue;
            }
        };
        let from = complete.iter().rposition(|b| *b == b'\n').map(|p| p + 1);
        match from {
            Some(p) => return seq_of(&complete[p..]),
            None if start == 0 => return seq_of(complete),
            None => back *= 2,
        }
    }
}

/// Appends log lines numbered `seqs` (each line its own number) to a log
/// file, as the shim writes them: for the tests of logs/.
#[cfg(test)]
pub(crate) fn append_numbered(path: &Path, seqs: std::ops::RangeInclusive<u64>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for s in seqs {
        f.write_all(
            Frame::log(s, "stdout", 0, format!("{s}\n").as_bytes())
                .to_line()
                .as_bytes(),
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn seqs(lines: &[LogLine]) -> Vec<u64> {
        lines.iter().map(|l| l.seq).collect()
    }

    #[test]
    fn lines_are_read_by_sequence_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        append_numbered(&bundle::rotated_log(d, 2), 1..=3);
        append_numbered(&bundle::rotated_log(d, 1), 4..=6);
        append_numbered(&bundle::log(d), 7..=8);
        assert_eq!(next_after_last(d), Some(9));
        let mut r = LogReader::open(d, 5);
        assert_eq!(seqs(&r.read(100, 1 << 20).unwrap()), [5, 6, 7, 8]);
        assert!(r.read(100, 1 << 20).unwrap().is_empty());
        // More lines, then a rotation under the reader: it finishes the
        // old file and goes on in the new one.
        append_numbered(&bundle::log(d), 9..=9);
        std::fs::rename(bundle::rotated_log(d, 2), bundle::rotated_log(d, 3)).unwrap();
        std::fs::rename(bundle::rotated_log(d, 1), bundle::rotated_log(d, 2)).unwrap();
        std::fs::rename(bundle::log(d), bundle::rotated_log(d, 1)).unwrap();
        append_numbered(&bundle::log(d), 10..=11);
        assert_eq!(seqs(&r.read(100, 1 << 20).unwrap()), [9, 10, 11]);
        // At most max_lines at a time, and a rewind reads again.
        r.rewind(2);
        assert_eq!(seqs(&r.read(3, 1 << 20).unwrap()), [2, 3, 4]);
        assert_eq!(r.next_seq(), 5);
        // Lines rotated away altogether: the reader starts at the oldest.
        std::fs::remove_file(bundle::rotated_log(d, 3)).unwrap();
        let mut r = LogReader::open(d, 1);
        assert_eq!(seqs(&r.read(2, 1 << 20).unwrap()), [4, 5]);
    }

    #[test]
    fn a_reader_finds_its_line_in_a_long_log_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Lines of every length, one of them longer than the search's
        // window, so that probes land inside lines and on their starts.
        let mut f = std::fs::File::create(bundle::log(d)).unwrap();
        for s in 1..=3000u64 {
            let body = if s == 1500 {
                "y".repeat(200_000)
            } else {
                "x".repeat((s * 37 % 700) as usize)
            };
            f.write_all(
                Frame::log(s, "stdout", 0, format!("{s} {body}\n").as_bytes())
                    .to_line()
                    .as_bytes(),
            )
            .unwrap();
        }
        drop(f);
        let file = std::fs::File::open(bundle::log(d)).unwrap();
        let len = file.metadata().unwrap().len();
        for want in [1, 2, 777, 1499, 1500, 1501, 2999, 3000, 3001, 10_000] {
            let at = offset_of(&file, want).unwrap();
            assert!(at < len, "{want}: {at} of {len}");
            let mut r = LogReader::open(d, want);
            let got = seqs(&r.read(2, 1 << 30).unwrap());
            let expected: Vec<u64> = (want..=3000).take(2).collect();
            assert_eq!(got, expected, "from {want}");
        }
        // Near the end, the search leaves little to skip.
        let at = offset_of(&file, 2990).unwrap();
        assert!(len - at < 2 * SCAN + 16 * 1024, "{at} of {len}");
        // Past the last line, nothing is read again.
        let mut r = LogReader::open(d, 3001);
        assert!(r.read(10, 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn a_partial_line_waits_for_its_end_and_bytes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut r = LogReader::open(d, 1);
        assert!(r.read(10, 1 << 20).unwrap().is_empty());
        assert_eq!(next_after_last(d), None);
        let whole = Frame::log(1, "stderr", 0, b"\xff\x00bin\n").to_line();
        let (a, b) = whole.split_at(10);
        let mut f = std::fs::File::create(bundle::log(d)).unwrap();
        f.write_all(a.as_bytes()).unwrap();
        assert!(r.read(10, 1 << 20).unwrap().is_empty());
        f.write_all(b.as_bytes()).unwrap();
        let lines = r.read(10, 1 << 20).unwrap();
        assert_eq!(lines[0].line, b"\xff\x00bin\n");
        assert_eq!(lines[0].stream, "stderr");
    }
}
