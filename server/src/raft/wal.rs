//! The Raft log in segment files of our own, beside rocksdb.
//!
//! Every acknowledged write waits for an fsync of the log on the leader and
//! on a follower, so the cost of that fsync is the floor of a write's
//! latency. Appending to a file (rocksdb's WAL does) makes each
//! `fdatasync` also commit the file's new size and newly allocated blocks
//! to the filesystem journal: 145 to 250 µs on this development VM's ext4
//! (a loop of small writes, and dd). Writing over blocks that already exist
//! is a data-only flush: 80 to 110 µs. So a segment is filled with zeros (and synced, with its directory)
//! when it is created, and records are then written over the zeros.
//!
//! A segment is `<seq>.wal`, [`SEGMENT_BYTES`] long by default (longer if one append
//! needs it). A record is `len: u32 LE, crc32: u32 LE, kind: u8, payload`,
//! the CRC taken over kind and payload; a zero length ends a segment.
//! Kinds: an entry (a records.proto `RaftEntry`) or a truncation (entries
//! from this index on are gone). Replaying the records in order rebuilds
//! the log; a torn record at the end of the last segment (a crash during
//! a write that was never acknowledged) ends the log there, while a bad
//! record anywhere else is corruption and an error naming the file.
//!
//! The entries since the last purge are also kept in memory, so that
//! replication reads them without touching the disk. The log is purged
//! after every snapshot (raft::start), which bounds both.
//!
//! The next segment is made (zero-filled and synced) ahead of time on a
//! thread of its own, so that moving to it costs a rename, not the writing
//! of its zeros on the thread that appends.
//!
//! An append writes its records and returns; a sync thread then flushes
//! everything written so far with one `fdatasync` and tells each append's
//! caller that its entries are durable. Openraft replicates an entry as
//! soon as the append returns, so the leader's fsync runs while the
//! followers write theirs; it counts the entry as the leader's only when
//! told it is durable.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use berth_proto::records;
use prost::Message;

use super::codec;
use super::{Entry, LogId};

/// The size a segment is created (and zero-filled) at, by default.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// The smallest segment size [`Wal::open`] takes.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

const HEADER: usize = 9;
const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;

/// Errors of the segment log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("raft log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("raft log {path} is corrupt at byte {offset}: {why}")]
    Corrupt {
        path: String,
        offset: u64,
        why: String,
    },
}

/// What an append's caller is told once its entries are durable.
pub type Done = Box<dyn FnOnce(Result<(), WalError>) + Send>;

/// The Raft log: segment files on disk and the live entries in memory.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    spare: Arc<Spare>,
    entries: Mutex<BTreeMap<u64, Entry>>,
    files: Arc<Mutex<Files>>,
    syncer: Arc<Syncer>,
}

/// The segments, and where the next record goes in the last one.
struct Files {
    segments: Vec<Segment>,
    current: Arc<File>,
    offset: u64,
    capacity: u64,
}

/// The next segment, made ahead of time: `spare.tmp`, zero-filled and
/// synced, once its thread is done.
#[derive(Default)]
struct Spare {
    ready: Mutex<Option<File>>,
    making: std::sync::atomic::AtomicBool,
}

/// The name of the segment made ahead of time, until it is taken.
const SPARE: &str = "spare.tmp";

/// Appends waiting for the sync thread.
#[derive(Default)]
struct Syncer {
    queue: Mutex<SyncQueue>,
    wake: Condvar,
    /// Set by the first failed fsync. The kernel forgets a writeback
    /// error once reported, so a later fsync of the same file could succeed
    /// with the failed pages lost: after one failure, the log refuses
    /// every write and sync.
    failed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct SyncQueue {
    waiting: Vec<Done>,
    closed: bool,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// The highest entry index written in this segment.
    max_index: Option<u64>,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and replays it; entries at or
    /// below `last_purged` are dropped. New segments are `segment_bytes`
    /// long (at least [`MIN_SEGMENT_BYTES`]).
    pub fn open(
        dir: &Path,
        last_purged: Option<u64>,
        segment_bytes: u64,
    ) -> Result<Self, WalError> {
        let segment_bytes = segment_bytes.max(MIN_SEGMENT_BYTES);
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        // A segment a crash interrupted before it was named is remade.
        for e in std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(e.path()).map_err(|err| io_err(&e.path(), err))?;
            }
        }
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut entries = BTreeMap::new();
        let mut segments = Vec::new();
        let mut tail = None;
        for (i, seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, *seq);
            let last = i + 1 == seqs.len();
            let (max_index, end, capacity) = replay(&path, last, &mut entries)?;
            segments.push(Segment {
                seq: *seq,
                path,
                max_index,
            });
            if last {
                tail = Some((end, capacity));
            }
        }
        if let Some(p) = last_purged {
            entries = entries.split_off(&(p + 1));
        }
        let (current, offset, capacity) = match (segments.last(), tail) {
            (Some(seg), Some((end, capacity))) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&seg.path)
                    .map_err(|e| io_err(&seg.path, e))?;
                (f, end, capacity)
            }
            _ => {
                let (seg, f) = create_segment(dir, 0, segment_bytes)?;
                segments.push(seg);
                (f, 0, segment_bytes)
            }
        };
        let files = Arc::new(Mutex::new(Files {
            segments,
            current: Arc::new(current),
            offset,
            capacity,
        }));
        let syncer = Arc::new(Syncer::default());
        {
            let (files, syncer) = (files.clone(), syncer.clone());
            std::thread::Builder::new()
                .name("raft-log-sync".into())
                .spawn(move || sync_loop(&files, &syncer))
                .map_err(|e| io_err(dir, e))?;
        }
        let spare = Arc::new(Spare::default());
        make_spare(dir, segment_bytes, &spare);
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            spare,
            entries: Mutex::new(entries),
            files,
            syncer,
        })
    }

    /// True if the log holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// The log id of the last entry, if any.
    pub fn last(&self) -> Option<LogId> {
        self.entries().values().next_back().map(|e| e.log_id)
    }

    /// The entries whose index is in `range`, in order.
    pub fn read(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        self.entries()
            .range(range)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Appends entries and returns once they are written; `done` is
    /// called, from the sync thread, once they are durable. An entry
    /// replaces any entry at its index or above.
    pub fn append(&self, batch: Vec<Entry>, done: Done) -> Result<(), WalError> {
        if batch.is_empty() {
            done(Ok(()));
            return Ok(());
        }
        self.write_entries(batch)?;
        let mut q = self.syncer.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.waiting.push(done);
        self.syncer.wake.notify_one();
        Ok(())
    }

    /// Appends entries and syncs them on this thread: durable when this
    /// returns. (A follower answers only once its entries are durable, so
    /// it gains nothing from the sync thread but a thread switch.)
    pub fn append_durable(&self, batch: Vec<Entry>) -> Result<(), WalError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write_entries(batch)?;
        self.sync()
    }

    /// Writes entries' records and makes them readable, unsynced.
    fn write_entries(&self, batch: Vec<Entry>) -> Result<(), WalError> {
        let Some(first) = batch.first().map(|e| e.log_id.index) else {
            return Ok(());
        };
        let max = batch.iter().map(|e| e.log_id.index).max();
        let mut buf = Vec::new();
        for e in &batch {
            encode_record(
                &mut buf,
                KIND_ENTRY,
                &codec::entry_to_record(e).encode_to_vec(),
            );
        }
        self.write(&buf, max)?;
        let mut entries = self.entries();
        let _ = entries.split_off(&first);
        for e in batch {
            entries.insert(e.log_id.index, e);
        }
        Ok(())
    }

    /// Removes the entries at `from` and above, durably.
    pub fn truncate(&self, from: u64) -> Result<(), WalError> {
        let mut buf = Vec::new();
        encode_record(&mut buf, KIND_TRUNCATE, &from.to_le_bytes());
        self.write(&buf, None)?;
        self.sync()?;
        let _ = self.entries().split_off(&from);
        Ok(())
    }

    /// Forgets the entries at `upto` and below, and deletes the segments
    /// that hold nothing newer. The caller records `upto` as purged first.
    pub fn purge(&self, upto: u64) -> Result<(), WalError> {
        {
            let mut entries = self.entries();
            *entries = entries.split_off(&(upto + 1));
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        // Only a prefix goes, and never the segment being written: a
        // truncation record only ever concerns entries written before it,
        // so it goes together with (or after) the entries it removed.
        while files.segments.len() > 1 && files.segments[0].max_index.is_none_or(|m| m <= upto) {
            let path = files.segments[0].path.clone();
            std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            files.segments.remove(0);
        }
        Ok(())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes everything written so far durable, on this thread. (Before a
    /// vote is saved: openraft requires the log's writes and the vote's to
    /// land in order.)
    pub fn sync(&self) -> Result<(), WalError> {
        let (file, path) = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            (files.current.clone(), files.current_path())
        };
        self.sync_file(&file, &path)
    }

    /// fdatasync of one segment, failing for good after a first failure.
    fn sync_file(&self, file: &File, path: &Path) -> Result<(), WalError> {
        use std::sync::atomic::Ordering;
        if self.syncer.failed.load(Ordering::Acquire) {
            return Err(io_err(
                path,
                std::io::Error::other("an earlier fsync of the raft log failed"),
            ));
        }
        let started = std::time::Instant::now();
        let r = file.sync_data();
        warn_if_slow("fdatasync of the raft log", path, started);
        r.map_err(|e| {
            self.syncer.failed.store(true, Ordering::Release);
            io_err(path, e)
        })
    }

    /// Writes encoded records at the end of the log (not yet synced).
    fn write(&self, buf: &[u8], max_index: Option<u64>) -> Result<(), WalError> {
        if self
            .syncer
            .failed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(WalError::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::other("an earlier fsync of the raft log failed"),
            });
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let need = buf.len() as u64 + HEADER as u64;
        if files.offset + need > files.capacity {
            // What the sync thread has not flushed yet of the full segment
            // is flushed now, before the log moves on.
            let path = files.current_path();
            self.sync_file(&files.current, &path)?;
            let seq = files.segments.last().map(|s| s.seq + 1).unwrap_or(0);
            let capacity = self.segment_bytes.max(need);
            let (seg, f) = self.next_segment(seq, capacity)?;
            files.segments.push(seg);
            files.current = Arc::new(f);
            files.offset = 0;
            files.capacity = capacity;
        }
        let path = files.current_path();
        files
            .current
            .write_all_at(buf, files.offset)
            .map_err(|e| io_err(&path, e))?;
        files.offset += buf.len() as u64;
        if let (Some(seg), Some(m)) = (files.segments.last_mut(), max_index) {
            seg.max_index = Some(seg.max_index.map_or(m, |x| x.max(m)));
        }
        Ok(())
    }
}

impl Wal {
    /// The segment `seq`: the one made ahead of time if it is ready and
    /// big enough, else one made now. Then the next is made ahead.
    fn next_segment(&self, seq: u64, capacity: u64) -> Result<(Segment, File), WalError> {
        let spare = match capacity <= self.segment_bytes {
            true => self
                .spare
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            false => None,
        };
        let made = match spare {
            Some(f) => {
                let path = segment_path(&self.dir, seq);
                name_segment(&self.dir, &self.dir.join(SPARE), &path)?;
                Ok((
                    Segment {
                        seq,
                        path,
                        max_index: None,
                    },
                    f,
                ))
            }
            None => create_segment(&self.dir, seq, capacity),
        };
        make_spare(&self.dir, self.segment_bytes, &self.spare);
        made
    }
}

/// Starts making the next segment on a thread of its own, unless one is
/// ready or being made. A failure is left for the next rotation, which
/// then makes its segment itself (and reports the error if it fails too).
fn make_spare(dir: &Path, segment_bytes: u64, spare: &Arc<Spare>) {
    use std::sync::atomic::Ordering;
    {
        // Checked and claimed under the lock the maker publishes under, so
        // that a rotation never sees "being made" after it was made.
        let ready = spare.ready.lock().unwrap_or_else(|p| p.into_inner());
        if ready.is_some() || spare.making.swap(true, Ordering::AcqRel) {
            return;
        }
    }
    let (dir, spare) = (dir.to_path_buf(), spare.clone());
    let started = std::thread::Builder::new()
        .name("raft-log-spare".into())
        .spawn({
            let spare = spare.clone();
            move || {
                let path = dir.join(SPARE);
                let made = zero_filled(&path, segment_bytes);
                let mut ready = spare.ready.lock().unwrap_or_else(|p| p.into_inner());
                match made {
                    Ok(f) => *ready = Some(f),
                    Err(e) => tracing::warn!(error = %e, "cannot make the next raft log segment ahead of time"),
                }
                spare.making.store(false, Ordering::Release);
            }
        });
    if started.is_err() {
        spare.making.store(false, Ordering::Release);
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let mut q = self.syncer.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        self.syncer.wake.notify_one();
    }
}

impl Files {
    fn current_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }
}

/// The sync thread: flushes whatever has been written with one
/// `fdatasync`, then tells every append that waited for it. The blocks
/// exist already (zero-filled at creation), so this flushes data and no
/// metadata (see the module documentation).
fn sync_loop(files: &Mutex<Files>, syncer: &Syncer) {
    loop {
        let waiting = {
            let mut q = syncer.queue.lock().unwrap_or_else(|p| p.into_inner());
            while q.waiting.is_empty() && !q.closed {
                q = syncer.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.waiting.is_empty() {
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let (file, path) = {
            let f = files.lock().unwrap_or_else(|p| p.into_inner());
            (f.current.clone(), f.current_path())
        };
        let result = match syncer.failed.load(std::sync::atomic::Ordering::Acquire) {
            true => Err(std::io::Error::other(
                "an earlier fsync of the raft log failed",
            )),
            false => file.sync_data(),
        };
        if result.is_err() {
            syncer
                .failed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        for done in waiting {
            done(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io_err(&path, std::io::Error::new(e.kind(), e.to_string()))),
            });
        }
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn io_err(path: &Path, source: std::io::Error) -> WalError {
    WalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn encode_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Creates a zero-filled segment and makes it (and its name) durable.
fn create_segment(dir: &Path, seq: u64, capacity: u64) -> Result<(Segment, File), WalError> {
    let path = segment_path(dir, seq);
    let tmp = dir.join(format!("{seq:016x}.tmp"));
    let f = zero_filled(&tmp, capacity)?;
    name_segment(dir, &tmp, &path)?;
    Ok((
        Segment {
            seq,
            path,
            max_index: None,
        },
        f,
    ))
}

/// Creates `path` holding `len` zero bytes, synced.
fn zero_filled(path: &Path, len: u64) -> Result<File, WalError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(|e| io_err(path, e))?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| io_err(path, e))?;
    Ok(f)
}

/// Gives a made segment its name, durably (the directory is synced).
fn name_segment(dir: &Path, from: &Path, to: &Path) -> Result<(), WalError> {
    std::fs::rename(from, to).map_err(|e| io_err(to, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Replays one segment into `entries`. Returns the highest entry index it
/// holds, where its records end, and its size. In the last segment a bad
/// record is a torn write: the log ends there and the rest is zeroed.
fn replay(
    path: &Path,
    last: bool,
    entries: &mut BTreeMap<u64, Entry>,
) -> Result<(Option<u64>, u64, u64), WalError> {
    let mut bytes = Vec::new();
    let mut f = OpenOptions::new()
        .read(true)
        .write(last)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    let mut off = 0usize;
    let mut max_index = None;
    let corrupt = |offset: usize, why: String| WalError::Corrupt {
        path: path.display().to_string(),
        offset: offset as u64,
        why,
    };
    let bad = loop {
        let Some(h) = bytes.get(off..off + HEADER) else {
            break None;
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let kind = h[8];
        if len == 0 && crc == 0 && kind == 0 {
            break None;
        }
        let Some(payload) = bytes.get(off + HEADER..off + HEADER + len) else {
            break Some("a record runs past the end of the segment".to_string());
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        if hasher.finalize() != crc {
            break Some("a record's checksum does not match".to_string());
        }
        match kind {
            KIND_ENTRY => {
                let rec = records::RaftEntry::decode(payload)
                    .map_err(|e| corrupt(off, format!("undecodable entry: {e}")))?;
                let entry = codec::entry_from_record(rec)
                    .map_err(|e| corrupt(off, format!("undecodable entry: {e}")))?;
                let index = entry.log_id.index;
                let _ = entries.split_off(&index);
                entries.insert(index, entry);
                max_index = Some(max_index.map_or(index, |m: u64| m.max(index)));
            }
            KIND_TRUNCATE => {
                let from = payload
                    .try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| corrupt(off, "a truncation record is not 8 bytes".into()))?;
                let _ = entries.split_off(&from);
            }
            other => break Some(format!("unknown record kind {other}")),
        }
        off += HEADER + len;
    };
    if let Some(why) = bad {
        if !last {
            return Err(corrupt(off, why));
        }
        tracing::warn!(path = %path.display(), offset = off, %why, "the raft log ends in a torn record; dropping it");
    }
    // Past the end of the last segment there must be only zeros. A torn
    // write can leave bytes there (a record whose first page never reached
    // the disk while a later one did); they are zeroed, so that records
    // written over them later cannot end where an old record starts.
    let end = off.min(bytes.len());
    if last && bytes[end..].iter().any(|b| *b != 0) {
        let zeros = vec![0u8; bytes.len() - end];
        f.write_all_at(&zeros, end as u64)
            .and_then(|()| f.sync_data())
            .map_err(|e| io_err(path, e))?;
    }
    Ok((max_index, off as u64, bytes.len() as u64))
}

/// How long one sync of the log may take before it is worth a warning: a
/// disk that slow delays every heartbeat and vote this member answers.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// Warns that a sync of `path` took longer than [`SLOW_SYNC`].
pub(crate) fn warn_if_slow(what: &str, path: &Path, started: std::time::Instant) {
    let took = started.elapsed();
    if took > SLOW_SYNC {
        tracing::warn!(path = %path.display(), took_ms = took.as_millis() as u64, "{what} was slow");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Request;
    use openraft::EntryPayload;

    fn entry(term: u64, index: u64, name: &str) -> Entry {
        Entry {
            log_id: codec::log_id(term, 1, index),
            payload: EntryPayload::Normal(Request(records::Command {
                schema: 1,
                op: Some(records::command::Op::Remove(records::RemoveContainer {
                    id: name.into(),
                    at_ms: index as i64,
                })),
            })),
        }
    }

    fn indexes(w: &Wal) -> Vec<(u64, u64)> {
        w.read(..)
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[test]
    fn appends_truncations_and_purges_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert!(w.is_empty());
        w.append_durable((1..=5).map(|i| entry(1, i, "a")).collect())
            .unwrap();
        w.truncate(4).unwrap();
        w.append_durable(vec![entry(2, 4, "b")]).unwrap();
        // An entry over an existing index replaces it and what follows.
        w.append_durable(vec![entry(2, 3, "c")]).unwrap();
        assert_eq!(indexes(&w), vec![(1, 1), (1, 2), (2, 3)]);
        drop(w);
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(indexes(&w), vec![(1, 1), (1, 2), (2, 3)]);
        assert_eq!(w.last().map(|l| l.index), Some(3));
        assert_eq!(w.read(2..3).len(), 1);
        w.purge(2).unwrap();
        drop(w);
        let w = Wal::open(dir.path(), Some(2), SEGMENT_BYTES).unwrap();
        assert_eq!(indexes(&w), vec![(2, 3)]);
    }

    #[test]
    fn segments_roll_over_and_purged_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        let big = "x".repeat(1 << 20);
        for i in 1..=20 {
            w.append_durable(vec![entry(1, i, &big)]).unwrap();
        }
        let count = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "wal")
                .count()
        };
        assert!(count() >= 3, "{} segments", count());
        // The segment after the current one is made ahead of time.
        let spare = dir.path().join(SPARE);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while w.spare.ready.lock().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "no spare segment made"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), SEGMENT_BYTES);
        w.purge(15).unwrap();
        // Seven 1 MiB entries fit a segment: 1-7 and 8-14 go, 15-20 stay.
        assert_eq!(count(), 1);
        drop(w);
        let w = Wal::open(dir.path(), Some(15), SEGMENT_BYTES).unwrap();
        assert_eq!(w.read(..).len(), 5);
        assert_eq!(w.last().map(|l| l.index), Some(20));
    }

    #[test]
    fn a_torn_tail_is_dropped_and_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        w.append_durable(vec![entry(1, 1, "a"), entry(1, 2, "b")])
            .unwrap();
        drop(w);
        // Tear the second record: flip a byte in its payload.
        let seg = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&seg).unwrap();
        let first_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        bytes[HEADER + first_len + HEADER + 2] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(indexes(&w), vec![(1, 1)]);
        // The log goes on where the torn record was.
        w.append_durable(vec![entry(1, 2, "c")]).unwrap();
        drop(w);
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(indexes(&w), vec![(1, 1), (1, 2)]);
        // The same damage in a segment that is not the last is an error.
        let big = "x".repeat(1 << 20);
        for i in 3..=12 {
            w.append_durable(vec![entry(1, i, &big)]).unwrap();
        }
        drop(w);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[HEADER + 2] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let err = Wal::open(dir.path(), None, SEGMENT_BYTES)
            .err()
            .expect("corruption found");
        let msg = err.to_string();
        assert!(
            msg.contains("0000000000000000.wal") && msg.contains("checksum"),
            "{msg}"
        );
    }

    #[test]
    fn stale_bytes_past_a_clean_end_are_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        w.append_durable(vec![entry(1, 1, "a")]).unwrap();
        drop(w);
        // A torn write: the page after the end reached the disk, the one
        // holding the next header did not.
        let seg = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&seg).unwrap();
        let stale = 8192;
        bytes[stale..stale + 4].copy_from_slice(&[7, 7, 7, 7]);
        std::fs::write(&seg, &bytes).unwrap();
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(indexes(&w), vec![(1, 1)]);
        let bytes = std::fs::read(&seg).unwrap();
        assert!(bytes[stale..stale + 4].iter().all(|b| *b == 0));
    }

    #[test]
    fn after_a_failed_fsync_the_log_takes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        w.syncer
            .failed
            .store(true, std::sync::atomic::Ordering::Release);
        let err = w.append_durable(vec![entry(1, 1, "a")]).unwrap_err();
        assert!(err.to_string().contains("earlier fsync"), "{err}");
        assert!(w.sync().is_err());
        assert!(w.is_empty());
    }
}
