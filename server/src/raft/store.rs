//! The store behind openraft: the Raft metadata and the state machine in
//! rocksdb, each in its own column family, and the log in segment files of
//! its own (wal.rs), where an fsync flushes only data. Every value
//! is a records.proto message. Logs written by earlier builds into rocksdb's
//! `logs` column family are moved to the segment log when the store opens.

use std::fmt::Debug;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::records::{self, SCHEMA_VERSION};
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, RaftLogReader, RaftSnapshotBuilder};
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::watch;

use super::codec;
use super::snapshot;
use super::wal::Wal;
use super::{Entry, LogId, Response, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use crate::state::{self, StateReader};

/// The column family where earlier builds kept the Raft log, keyed by
/// big-endian index; now only read once, to move it (see [`open_wal`]).
pub const CF_LOGS: &str = "logs";
/// The column family of Raft metadata: vote, committed, last purged, snapshot.
pub const CF_META: &str = "meta";
/// The column family of state-machine rows (see state::keys).
pub const CF_SM: &str = "sm";
/// The column family of what the state machine has applied.
pub const CF_SM_META: &str = "sm_meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Set while a snapshot is being installed, to the snapshot's id: a member
/// that stopped in the middle installs it again when it starts.
const KEY_INSTALLING: &[u8] = b"installing";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";

/// Errors of opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the data dir already holds a cluster; a restore needs an empty one")]
    NotEmpty,
    #[error(transparent)]
    Wal(#[from] super::wal::WalError),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// Opens (or creates) the rocksdb database at `path`.
pub fn open(path: &Path) -> Result<Arc<DB>, StoreError> {
    std::fs::create_dir_all(path).map_err(|source| StoreError::CreateDir {
        path: path.display().to_string(),
        source,
    })?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A bounded disk under a steady stream of writes (container logs):
    // memtables flush at 8 MiB, and the write-ahead log is cut back by
    // forced flushes once it passes 32 MiB (rocksdb's defaults, 64 MiB
    // memtables and a WAL bounded only by them, let it grow far more).
    opts.set_max_total_wal_size(32 << 20);
    // Flushes, compactions and an installed snapshot write tens of MiB at
    // once: handed to writeback each MiB, they never leave a backlog that
    // the Raft log's small fsyncs must wait behind (raft/writeback.rs).
    opts.set_bytes_per_sync(1 << 20);
    opts.set_wal_bytes_per_sync(1 << 20);
    let cfs = [CF_LOGS, CF_META, CF_SM, CF_SM_META].into_iter().map(|n| {
        let mut cf = Options::default();
        cf.set_write_buffer_size(8 << 20);
        ColumnFamilyDescriptor::new(n, cf)
    });
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Arc::new(db))
}

/// Opens the segment log in `wal_dir` (new segments `segment_bytes`
/// long), past what `db` records as purged. A log that earlier builds kept
/// in rocksdb is moved into it first.
pub fn open_wal(db: &DB, wal_dir: &Path, segment_bytes: u64) -> Result<Arc<Wal>, StoreError> {
    let last_purged = match db.get_cf(cf(db, CF_META), KEY_LAST_PURGED)? {
        Some(v) => Some(records::LogId::decode(v.as_slice())?.index),
        None => None,
    };
    let wal = Wal::open(wal_dir, last_purged, segment_bytes)?;
    let logs = cf(db, CF_LOGS);
    let mut old = Vec::new();
    // Only into an empty segment log: once it holds entries, they are newer
    // than anything left in rocksdb (a crash after a move, before the
    // delete), and moving again would replace them.
    let moving = wal.is_empty();
    for item in db
        .iterator_cf(logs, IteratorMode::Start)
        .take_while(|_| moving)
    {
        let (_, v) = item?;
        let rec = records::RaftEntry::decode(v.as_ref())?;
        let entry = codec::entry_from_record(rec).map_err(|e| super::wal::WalError::Corrupt {
            path: "rocksdb column family logs".into(),
            offset: 0,
            why: e.to_string(),
        })?;
        if last_purged.is_none_or(|p| entry.log_id.index > p) {
            old.push(entry);
        }
    }
    let moved = old.len();
    if moved > 0 {
        wal.append_durable(old)?;
    }
    if db.iterator_cf(logs, IteratorMode::Start).next().is_some() {
        // Moved (and synced), then deleted, synced too.
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(logs, index_key(0), index_key(u64::MAX));
        db.write_opt(batch, &sync_writes())?;
        tracing::info!(
            entries = moved,
            "moved the raft log from rocksdb to segment files"
        );
    }
    Ok(Arc::new(wal))
}

/// Splits one database and the segment log into openraft's log store and
/// state machine, plus a reader of the state for queries.
/// `node_id` is this member's: the log store syncs its own entries (as
/// leader) in the background, and others' (as follower) before it answers.
pub fn split(
    db: Arc<DB>,
    wal: Arc<Wal>,
    node_id: u64,
    snap_dir: PathBuf,
) -> Result<(LogStore, StateMachine, StateReader), StoreError> {
    finish_interrupted_install(&db, &snap_dir)?;
    let applied = read_applied(&db)?.map(|l| l.index).unwrap_or(0);
    let (tx, rx) = watch::channel(applied);
    let (changes_tx, changes_rx) = watch::channel(applied);
    let reader = StateReader::new(db.clone(), rx, changes_rx);
    Ok((
        LogStore {
            vote: Arc::new(std::sync::Mutex::new(read_vote(&db)?)),
            db: db.clone(),
            wal,
            node_id,
        },
        StateMachine {
            db,
            snap_dir,
            applied_tx: Arc::new(tx),
            changes_tx: Arc::new(changes_tx),
        },
        reader,
    ))
}

/// The Raft log (segment files) and its metadata (rocksdb).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    wal: Arc<Wal>,
    vote: Arc<std::sync::Mutex<Option<Vote>>>,
    node_id: u64,
}

/// The state machine in rocksdb; every applied command lands in [`CF_SM`].
pub struct StateMachine {
    db: Arc<DB>,
    /// Where snapshot files live (raft/snapshot.rs).
    snap_dir: PathBuf,
    applied_tx: Arc<watch::Sender<u64>>,
    /// The index of the last applied entry that was more than log lines.
    changes_tx: Arc<watch::Sender<u64>>,
}

/// Builds snapshots from an iterator over the state-machine rows.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snap_dir: PathBuf,
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created when the store is opened")
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn sync_writes() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// Storage errors cross openraft as `io::Error`s that keep their message.
fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_applied(db: &DB) -> Result<Option<LogId>, StoreError> {
    match db.get_cf(cf(db, CF_SM_META), KEY_APPLIED)? {
        Some(v) => Ok(Some(codec::log_id_from_record(&records::LogId::decode(
            v.as_slice(),
        )?))),
        None => Ok(None),
    }
}

fn read_membership(db: &DB) -> Result<StoredMembership, StoreError> {
    match db.get_cf(cf(db, CF_SM_META), KEY_MEMBERSHIP)? {
        Some(v) => Ok(
            codec::stored_membership_from_record(&records::StoredMembership::decode(v.as_slice())?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ),
        None => Ok(StoredMembership::default()),
    }
}

/// True if the store has ever held a cluster membership (in its log or
/// its state machine), which means it must not be bootstrapped again.
pub fn has_membership(db: &DB) -> Result<bool, StoreError> {
    if db.get_cf(cf(db, CF_SM_META), KEY_MEMBERSHIP)?.is_some() {
        return Ok(true);
    }
    if db.get_cf(cf(db, CF_META), KEY_VOTE)?.is_some() {
        return Ok(true);
    }
    Ok(db
        .iterator_cf(cf(db, CF_LOGS), IteratorMode::Start)
        .next()
        .is_some())
}

fn read_vote(db: &DB) -> Result<Option<Vote>, StoreError> {
    match db.get_cf(cf(db, CF_META), KEY_VOTE)? {
        Some(v) => Ok(Some(codec::vote_from_record(&records::Vote::decode(
            v.as_slice(),
        )?))),
        None => Ok(None),
    }
}

impl LogStore {
    fn read_log_id(&self, key: &[u8]) -> Result<Option<LogId>, std::io::Error> {
        match self.db.get_cf(cf(&self.db, CF_META), key).map_err(io)? {
            Some(v) => {
                let r = records::LogId::decode(v.as_slice()).map_err(io)?;
                Ok(Some(codec::log_id_from_record(&r)))
            }
            None => Ok(None),
        }
    }

    fn put_meta(&self, key: &[u8], value: Vec<u8>) -> Result<(), std::io::Error> {
        let started = std::time::Instant::now();
        let r = self
            .db
            .put_cf_opt(cf(&self.db, CF_META), key, value, &sync_writes())
            .map_err(io);
        super::wal::warn_if_slow("a synced write of raft metadata", self.db.path(), started);
        r
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        Ok(self.wal.read(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        // Replication reads the vote around every read of entries: it is
        // kept in memory, and written through to rocksdb by save_vote.
        Ok(*self.vote.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged = self.read_log_id(KEY_LAST_PURGED)?;
        let last_log_id = self.wal.last().or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        // openraft needs the log's writes and the vote's to land in the
        // order they were made: what the sync thread has not flushed yet of
        // the log is flushed first.
        self.wal.sync().map_err(io)?;
        self.put_meta(KEY_VOTE, codec::vote_to_record(vote).encode_to_vec())?;
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // Not synced: the committed index is only a lower bound to apply up
        // to after a restart (the entries themselves are durable), and it
        // is written on the Raft core's path to every apply.
        if let Some(c) = committed {
            self.db
                .put_cf(
                    cf(&self.db, CF_META),
                    KEY_COMMITTED,
                    codec::log_id_to_record(&c).encode_to_vec(),
                )
                .map_err(io)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        // The committed index is saved unsynced, and openraft may save it
        // before the leader's own copy of those entries is durable: after a
        // power loss it can name entries the log no longer holds. It is
        // only a lower bound; past the log's end it falls back to the purge
        // point, and the leader tells this member the rest.
        let committed = self.read_log_id(KEY_COMMITTED)?;
        let last_purged = self.read_log_id(KEY_LAST_PURGED)?;
        let held = self.wal.last().or(last_purged);
        Ok(match committed {
            Some(c) if held.is_none_or(|h| c.index > h.index) => last_purged,
            c => c,
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let own = entries
            .first()
            .is_some_and(|e| e.log_id.leader_id.node_id == self.node_id);
        if own {
            // The leader's entries are written now and synced by the log's
            // sync thread, which tells openraft once they are durable:
            // openraft counts an entry as the leader's only then, and
            // meanwhile replicates it, so the leader's fsync and the
            // followers' run at the same time.
            self.wal
                .append(
                    entries,
                    Box::new(move |r| callback.io_completed(r.map_err(io))),
                )
                .map_err(io)
        } else {
            // A follower answers once its entries are durable: syncing here
            // saves a thread switch.
            let r = self.wal.append_durable(entries);
            let failed = r.as_ref().err().map(io);
            callback.io_completed(r.map_err(io));
            failed.map_or(Ok(()), Err)
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.wal.truncate(from).map_err(io)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        self.put_meta(
            KEY_LAST_PURGED,
            codec::log_id_to_record(&log_id).encode_to_vec(),
        )?;
        self.wal.purge(log_id.index).map_err(io)
    }
}

/// Records in `batch` that the state machine has applied up to `log_id`.
fn set_applied(db: &DB, batch: &mut WriteBatch, log_id: &LogId) {
    batch.put_cf(
        cf(db, CF_SM_META),
        KEY_APPLIED,
        codec::log_id_to_record(log_id).encode_to_vec(),
    );
}

impl StateMachine {
    /// Applies one entry in one rocksdb batch (a batched entry's commands
    /// see each other's writes through the Tx), with the applied index in
    /// it: an entry lands whole or not at all.
    fn apply_one(&self, e: &Entry) -> Result<records::CommandResult, std::io::Error> {
        let mut tx = state::tx::Tx::new(&self.db, cf(&self.db, CF_SM));
        let mut meta = Vec::new();
        let result = match &e.payload {
            EntryPayload::Blank => records::CommandResult::default(),
            EntryPayload::Normal(req) => state::apply::apply(&mut tx, &req.0, e.log_id.index)
                .map_err(|err| io(format!("applying entry {}: {err}", e.log_id.index)))?,
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(e.log_id), m.clone());
                meta.push((
                    KEY_MEMBERSHIP,
                    codec::stored_membership_to_record(&stored).encode_to_vec(),
                ));
                records::CommandResult::default()
            }
        };
        let mut batch = tx.into_batch();
        for (k, v) in meta {
            batch.put_cf(cf(&self.db, CF_SM_META), k, v);
        }
        set_applied(&self.db, &mut batch, &e.log_id);
        self.db
            .write(batch)
            .map_err(|err| io(format!("applying entry {}: {err}", e.log_id.index)))?;
        Ok(result)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let applied = read_applied(&self.db).map_err(io)?;
        let membership = read_membership(&self.db).map_err(io)?;
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + Send,
    {
        let mut last = None;
        let mut changed = None;
        let mut slicer = crate::stall::Slicer::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            // A stream of ready entries never returns Pending, so a long
            // run of them (a service's thousands of tasks, 64 to an entry)
            // would hold the server's one thread from heartbeats and
            // votes for as long: let the others in between entries.
            slicer.step().await;
            let result = self.apply_one(&entry)?;
            last = Some(entry.log_id.index);
            if !matches!(&entry.payload, EntryPayload::Normal(req) if state::apply::only_logs(&req.0))
            {
                changed = last;
            }
            if let Some(r) = responder {
                r.send(Response(result));
            }
        }
        if let Some(i) = last {
            self.applied_tx.send_replace(i);
        }
        if let Some(i) = changed {
            self.changes_tx.send_replace(i);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snap_dir: self.snap_dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: File,
    ) -> Result<(), std::io::Error> {
        // Off the server's one thread, like building one, and nicer.
        let (db, dir, meta_owned) = (self.db.clone(), self.snap_dir.clone(), meta.clone());
        crate::background::run("snapshot-install", move || {
            install_file(&db, &dir, &meta_owned, snapshot)
        })
        .await
        .map_err(io)??;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.applied_tx.send_replace(index);
        self.changes_tx.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let v = self
            .db
            .get_cf(cf(&self.db, CF_META), KEY_SNAPSHOT)
            .map_err(io)?;
        let Some(bytes) = v else { return Ok(None) };
        let header = records::SnapshotHeader::decode(bytes.as_slice()).map_err(io)?;
        // A snapshot of an older build kept no file: there is none to
        // send, and openraft builds a new one.
        match File::open(snapshot::path(&self.snap_dir, &header.snapshot_id)) {
            Ok(file) => Ok(Some(Snapshot {
                meta: snapshot_meta(&header)?,
                snapshot: file,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A snapshot as openraft moves it: its metadata and its file
/// (raft/snapshot.rs).
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, File>;

fn snapshot_meta(h: &records::SnapshotHeader) -> Result<SnapshotMeta, std::io::Error> {
    Ok(SnapshotMeta {
        last_log_id: h.last_applied.as_ref().map(codec::log_id_from_record),
        last_membership: h
            .membership
            .as_ref()
            .map(codec::stored_membership_from_record)
            .transpose()
            .map_err(io)?
            .unwrap_or_default(),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        // Off the server's one thread: reading every row of a large state
        // would hold heartbeats and writes for as long. At a lower
        // priority too (crate::background), so that on a loaded machine
        // the heartbeats keep their CPU while it is written.
        let (db, dir) = (self.db.clone(), self.snap_dir.clone());
        crate::background::run("snapshot-build", move || build_snapshot(&db, &dir))
            .await
            .map_err(io)?
    }
}

/// Replaces every state-machine row with a snapshot file's, streaming its
/// rows in batches. The store records the install as under way first and
/// as done last (with what the snapshot covers), so that a member stopped
/// in between installs it again when it starts, never keeping half of it.
fn install_file(
    db: &DB,
    dir: &std::path::Path,
    meta: &SnapshotMeta,
    file: File,
) -> Result<(), std::io::Error> {
    let id = snapshot::Reader::open(file.try_clone()?, dir)
        .map_err(io)?
        .header
        .snapshot_id;
    let path = snapshot::path(dir, &id);
    // The file becomes this member's current snapshot: it must be in its
    // own directory (a received one is written there already).
    let file = if path.exists() {
        File::open(&path)?
    } else {
        snapshot::keep_copy(file, &path).map_err(io)?
    };
    let mut reader = snapshot::Reader::open(file, &path).map_err(io)?;
    db.put_cf_opt(
        cf(db, CF_META),
        KEY_INSTALLING,
        id.as_bytes(),
        &sync_writes(),
    )
    .map_err(io)?;
    let sm = cf(db, CF_SM);
    let mut batch = WriteBatch::default();
    // Every row goes: state-machine keys are printable prefixes, all
    // below 0xFF.
    batch.delete_range_cf(sm, &[][..], &[0xffu8; 8][..]);
    let mut size = 0;
    while let Some(row) = reader.next_row().map_err(io)? {
        size += row.key.len() + row.value.len();
        batch.put_cf(sm, &row.key, &row.value);
        if size >= snapshot::INSTALL_BATCH {
            db.write(std::mem::take(&mut batch)).map_err(io)?;
            size = 0;
        }
    }
    if let Some(l) = &meta.last_log_id {
        set_applied(db, &mut batch, l);
    }
    batch.put_cf(
        cf(db, CF_SM_META),
        KEY_MEMBERSHIP,
        codec::stored_membership_to_record(&meta.last_membership).encode_to_vec(),
    );
    batch.put_cf(cf(db, CF_META), KEY_SNAPSHOT, reader.header.encode_to_vec());
    batch.delete_cf(cf(db, CF_META), KEY_INSTALLING);
    db.write_opt(batch, &sync_writes()).map_err(io)?;
    snapshot::remove_others(dir, &path);
    Ok(())
}

/// Installs again a snapshot whose install a stop interrupted.
fn finish_interrupted_install(db: &DB, dir: &std::path::Path) -> Result<(), StoreError> {
    let Some(id) = db.get_cf(cf(db, CF_META), KEY_INSTALLING)? else {
        return Ok(());
    };
    let id = String::from_utf8_lossy(&id).into_owned();
    let path = snapshot::path(dir, &id);
    let file = File::open(&path).map_err(|e| {
        StoreError::Corrupt(format!(
            "an interrupted snapshot install needs {}: {e}",
            path.display()
        ))
    })?;
    let header = snapshot::Reader::open(
        file.try_clone()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        &path,
    )
    .map_err(|e| StoreError::Corrupt(e.to_string()))?
    .header;
    let meta = snapshot_meta(&header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tracing::info!(snapshot = %id, "finishing an interrupted snapshot install");
    install_file(db, dir, &meta, file).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Builds a snapshot file of every state-machine row and makes it the
/// current snapshot.
fn build_snapshot(db: &DB, dir: &std::path::Path) -> Result<Snapshot, std::io::Error> {
    // A rocksdb snapshot gives one consistent view of the rows and of
    // what they cover, even while apply goes on.
    let view = db.snapshot();
    let applied = view
        .get_cf(cf(db, CF_SM_META), KEY_APPLIED)
        .map_err(io)?
        .map(|v| records::LogId::decode(v.as_slice()))
        .transpose()
        .map_err(io)?;
    let membership = view
        .get_cf(cf(db, CF_SM_META), KEY_MEMBERSHIP)
        .map_err(io)?
        .map(|v| records::StoredMembership::decode(v.as_slice()))
        .transpose()
        .map_err(io)?;
    let snapshot_id = match &applied {
        Some(l) => format!("{}-{}-{}", l.term, l.index, now_ms()),
        None => format!("empty-{}", now_ms()),
    };
    let mut header = records::SnapshotHeader {
        schema: SCHEMA_VERSION,
        last_applied: applied,
        membership,
        snapshot_id,
        row_count: 0,
    };
    let mut w = snapshot::Writer::create(dir, &header).map_err(io)?;
    for item in view.iterator_cf(cf(db, CF_SM), IteratorMode::Start) {
        let (k, v) = item.map_err(io)?;
        w.row(&k, &v).map_err(io)?;
    }
    let (path, rows) = w.finish().map_err(io)?;
    header.row_count = rows;
    db.put_cf_opt(
        cf(db, CF_META),
        KEY_SNAPSHOT,
        header.encode_to_vec(),
        &sync_writes(),
    )
    .map_err(io)?;
    snapshot::remove_others(dir, &path);
    Ok(Snapshot {
        meta: snapshot_meta(&header)?,
        snapshot: File::open(&path)?,
    })
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A consistent copy of every state-machine row, from a rocksdb snapshot:
/// what `berth cluster backup` writes.
pub fn dump(db: &DB) -> Result<records::Snapshot, StoreError> {
    let view = db.snapshot();
    let applied = view
        .get_cf(cf(db, CF_SM_META), KEY_APPLIED)?
        .map(|v| records::LogId::decode(v.as_slice()))
        .transpose()?;
    let mut rows = Vec::new();
    for item in view.iterator_cf(cf(db, CF_SM), IteratorMode::Start) {
        let (k, v) = item?;
        rows.push(records::KeyValue {
            key: k.to_vec(),
            value: v.to_vec(),
        });
    }
    Ok(records::Snapshot {
        schema: SCHEMA_VERSION,
        last_applied: applied,
        membership: None,
        snapshot_id: format!("backup-{}", now_ms()),
        rows,
    })
}

/// Fills a fresh store's state machine with the rows of a backup. The Raft
/// log, vote and membership stay empty: the server then bootstraps a new
/// cluster on top of the restored state.
pub fn restore(db: &DB, backup: &[u8]) -> Result<usize, StoreError> {
    let snap = records::Snapshot::decode(backup)?;
    if has_membership(db)?
        || db
            .iterator_cf(cf(db, CF_SM), IteratorMode::Start)
            .next()
            .is_some()
    {
        return Err(StoreError::NotEmpty);
    }
    let mut batch = WriteBatch::default();
    for row in &snap.rows {
        batch.put_cf(cf(db, CF_SM), &row.key, &row.value);
    }
    db.write_opt(batch, &sync_writes())?;
    Ok(snap.rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Request;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: codec::log_id(1, 1, index),
            payload: EntryPayload::Normal(Request(records::Command {
                schema: SCHEMA_VERSION,
                op: Some(records::command::Op::Remove(records::RemoveContainer {
                    id: format!("c{index}"),
                    at_ms: 0,
                })),
            })),
        }
    }

    fn put_old_log(db: &DB, indexes: std::ops::RangeInclusive<u64>) {
        for i in indexes {
            db.put_cf(
                cf(db, CF_LOGS),
                index_key(i),
                codec::entry_to_record(&entry(i)).encode_to_vec(),
            )
            .unwrap();
        }
    }

    #[test]
    fn an_old_log_moves_once_and_never_over_newer_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("raft")).unwrap();
        put_old_log(&db, 1..=3);
        let wal = open_wal(&db, &dir.path().join("raft-log"), 1 << 20).unwrap();
        assert_eq!(wal.last().map(|l| l.index), Some(3));
        assert!(db
            .iterator_cf(cf(&db, CF_LOGS), IteratorMode::Start)
            .next()
            .is_none());
        wal.append_durable(vec![entry(4)]).unwrap();
        drop(wal);
        // As if a crash had come between the move and the delete.
        put_old_log(&db, 1..=3);
        let wal = open_wal(&db, &dir.path().join("raft-log"), 1 << 20).unwrap();
        assert_eq!(wal.last().map(|l| l.index), Some(4), "entry 4 survives");
        assert!(db
            .iterator_cf(cf(&db, CF_LOGS), IteratorMode::Start)
            .next()
            .is_none());
    }

    #[test]
    fn a_member_stopped_during_a_snapshot_install_finishes_it_when_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path().join("snapshots");
        let db = open(&dir.path().join("raft")).unwrap();
        let sm = cf(&db, CF_SM);
        for i in 0..100u32 {
            db.put_cf(sm, format!("c/{i:04}"), format!("row {i}"))
                .unwrap();
        }
        let mut batch = WriteBatch::default();
        set_applied(&db, &mut batch, &codec::log_id(2, 1, 40));
        db.write(batch).unwrap();
        drop(build_snapshot(&db, &snaps).unwrap());
        let file = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "snap"))
            .expect("the snapshot file");
        let id = snapshot::Reader::open(File::open(&file).unwrap(), &file)
            .unwrap()
            .header
            .snapshot_id;
        // As a stop halfway through an install leaves it: marked under
        // way, the old rows gone, only some of the new ones written.
        db.put_cf(cf(&db, CF_META), KEY_INSTALLING, id.as_bytes())
            .unwrap();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(sm, &[][..], &[0xffu8; 8][..]);
        db.write(batch).unwrap();
        db.put_cf(sm, "c/0000", "row 0").unwrap();
        drop(db);
        let db = open(&dir.path().join("raft")).unwrap();
        let wal = open_wal(&db, &dir.path().join("raft-log"), 1 << 20).unwrap();
        split(db.clone(), wal, 1, snaps).expect("the store opens and finishes the install");
        let rows: Vec<_> = db
            .iterator_cf(cf(&db, CF_SM), IteratorMode::Start)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rows.len(), 100);
        assert_eq!(&*rows[99].1, b"row 99");
        assert!(db
            .get_cf(cf(&db, CF_META), KEY_INSTALLING)
            .unwrap()
            .is_none());
        assert_eq!(read_applied(&db).unwrap().map(|l| l.index), Some(40));
    }

    #[tokio::test]
    async fn the_committed_index_never_names_entries_the_log_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("raft")).unwrap();
        let wal = open_wal(&db, &dir.path().join("raft-log"), 1 << 20).unwrap();
        wal.append_durable(vec![entry(1), entry(2)]).unwrap();
        let (mut log, _sm, _reader) = split(db, wal, 1, dir.path().join("snapshots")).unwrap();
        log.save_committed(Some(codec::log_id(1, 1, 2)))
            .await
            .unwrap();
        assert_eq!(
            log.read_committed().await.unwrap().map(|l| l.index),
            Some(2)
        );
        // Saved unsynced ahead of a log that then lost its tail.
        log.save_committed(Some(codec::log_id(1, 1, 9)))
            .await
            .unwrap();
        assert_eq!(log.read_committed().await.unwrap(), None);
        log.purge(codec::log_id(1, 1, 1)).await.unwrap();
        assert_eq!(
            log.read_committed().await.unwrap().map(|l| l.index),
            Some(1)
        );
    }
}
