//! The replicated state: commands, how they apply, row keys, and queries.
//! A write is API -> Raft commit -> [`apply`]; reads go through
//! [`StateReader`].

pub mod apply;
pub mod keys;
pub mod status;
pub mod tx;
pub mod validate;

use std::sync::Arc;

use berth_proto::records::{Container, LogLine, Node};
use prost::Message;
use rocksdb::{Direction, IteratorMode, DB};
use tokio::sync::watch;

use crate::raft::store::{self, CF_SM};

/// Errors of reading the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt row: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("the name {0:?} matches more than one container; give more of the id")]
    Ambiguous(String),
}

/// A read-only view of the state machine, with a way to wait for changes.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<DB>,
    applied: watch::Receiver<u64>,
    changes: watch::Receiver<u64>,
}

impl StateReader {
    /// `applied` changes with every applied entry; `changes` with every
    /// one that is more than log lines (see [`StateReader::subscribe_changes`]).
    pub fn new(db: Arc<DB>, applied: watch::Receiver<u64>, changes: watch::Receiver<u64>) -> Self {
        Self {
            db,
            applied,
            changes,
        }
    }

    /// A receiver that changes whenever an entry other than log lines is
    /// applied: what the reconciler plans from. A flood of log chunks does
    /// not wake it.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// True if this store has ever been part of a cluster.
    pub fn has_membership(&self) -> Result<bool, StateError> {
        Ok(store::has_membership(&self.db)?)
    }

    /// A consistent copy of the state, as a records.proto Snapshot.
    pub fn backup(&self) -> Result<Vec<u8>, StateError> {
        Ok(store::dump(&self.db)?.encode_to_vec())
    }

    /// A receiver that changes whenever a command is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    fn sm(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_SM)
            .expect("state column family exists")
    }

    pub fn container(&self, id: &str) -> Result<Option<Container>, StateError> {
        match self.db.get_cf(self.sm(), keys::container(id))? {
            Some(v) => Ok(Some(Container::decode(v.as_slice())?)),
            None => Ok(None),
        }
    }

    /// Finds a container by full id, by name, or by a unique id prefix, as
    /// Docker does.
    pub fn find_container(&self, name_or_id: &str) -> Result<Option<Container>, StateError> {
        if name_or_id.is_empty() {
            return Ok(None);
        }
        if let Some(c) = self.container(name_or_id)? {
            return Ok(Some(c));
        }
        let name = name_or_id.trim_start_matches('/');
        if let Some(id) = self.db.get_cf(self.sm(), keys::container_name(name))? {
            return self.container(&String::from_utf8_lossy(&id));
        }
        let prefix = keys::container(name_or_id);
        let mut found = None;
        for item in self
            .db
            .iterator_cf(self.sm(), IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if found.is_some() {
                return Err(StateError::Ambiguous(name_or_id.to_string()));
            }
            found = Some(Container::decode(v.as_ref())?);
        }
        Ok(found)
    }

    /// Every container, oldest first.
    pub fn containers(&self) -> Result<Vec<Container>, StateError> {
        let mut out: Vec<Container> = self.scan(keys::CONTAINER_PREFIX)?;
        out.sort_by_key(|c| c.created_at_ms);
        Ok(out)
    }

    /// Every node, with its labels.
    pub fn nodes(&self) -> Result<Vec<Node>, StateError> {
        let nodes: Vec<Node> = self.scan(keys::NODE_PREFIX)?;
        nodes.into_iter().map(|n| self.with_labels(n)).collect()
    }

    /// The cluster's CA and token secrets, once a leader has made them.
    pub fn pki(&self) -> Result<Option<berth_proto::records::Pki>, StateError> {
        match self.db.get_cf(self.sm(), keys::PKI)? {
            Some(v) => Ok(Some(berth_proto::records::Pki::decode(v.as_slice())?)),
            None => Ok(None),
        }
    }

    /// The certificates recorded for a member, by role and name.
    pub fn member_cert(
        &self,
        role: &str,
        name: &str,
    ) -> Result<Option<berth_proto::records::MemberCert>, StateError> {
        match self.db.get_cf(self.sm(), keys::member_cert(role, name))? {
            Some(v) => Ok(Some(berth_proto::records::MemberCert::decode(
                v.as_slice(),
            )?)),
            None => Ok(None),
        }
    }

    /// True if the certificate with this serial (hex), of this role and
    /// name, was revoked: by its serial, or (a server's) by its id.
    pub fn is_revoked(&self, serial: &str, role: &str, name: &str) -> Result<bool, StateError> {
        if role == "server"
            && self
                .db
                .get_pinned_cf(self.sm(), keys::revoked_server(name))?
                .is_some()
        {
            return Ok(true);
        }
        Ok(self
            .db
            .get_pinned_cf(self.sm(), keys::revoked(serial))?
            .is_some())
    }

    /// One node, with its labels.
    pub fn node(&self, name: &str) -> Result<Option<Node>, StateError> {
        match self.db.get_cf(self.sm(), keys::node(name))? {
            Some(v) => Ok(Some(self.with_labels(Node::decode(v.as_slice())?)?)),
            None => Ok(None),
        }
    }

    /// Fills a node's labels from its label rows (over any an earlier
    /// build kept in the record).
    fn with_labels(&self, mut node: Node) -> Result<Node, StateError> {
        let prefix = keys::node_label_prefix(&node.name);
        for item in self
            .db
            .iterator_cf(self.sm(), IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            let Some(key) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let label = berth_proto::records::NodeLabel::decode(v.as_ref())?;
            node.labels
                .insert(String::from_utf8_lossy(key).into_owned(), label.value);
        }
        Ok(node)
    }

    /// Every service, by name.
    pub fn services(&self) -> Result<Vec<berth_proto::records::Service>, StateError> {
        self.scan(keys::SERVICE_PREFIX)
    }

    /// One service.
    pub fn service(&self, name: &str) -> Result<Option<berth_proto::records::Service>, StateError> {
        match self.db.get_cf(self.sm(), keys::service(name))? {
            Some(v) => Ok(Some(berth_proto::records::Service::decode(v.as_slice())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` events from the Raft index `from` on.
    pub fn events(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<berth_proto::records::Event>, StateError> {
        let start = keys::event(from, 0);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.sm(), IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(keys::EVENT_PREFIX) || out.len() >= limit {
                break;
            }
            out.push(berth_proto::records::Event::decode(v.as_ref())?);
        }
        Ok(out)
    }

    /// Up to `limit` lines of a container's replicated log tail from
    /// sequence number `from` (the oldest kept, if those before it were
    /// trimmed).
    pub fn log_lines(&self, id: &str, from: u64, limit: usize) -> Result<Vec<LogLine>, StateError> {
        let Some(c) = self.container(id)? else {
            return Ok(Vec::new());
        };
        // The last chunk that starts at or before `from`.
        let start = c
            .log_chunks
            .iter()
            .rposition(|m| m.first_seq <= from)
            .unwrap_or(0);
        let mut out = Vec::new();
        for m in &c.log_chunks[start..] {
            let Some(v) = self
                .db
                .get_cf(self.sm(), keys::log_chunk(id, m.first_seq))?
            else {
                continue;
            };
            let chunk = berth_proto::records::LogChunk::decode(v.as_slice())?;
            for l in chunk.lines {
                if l.seq >= from {
                    out.push(l);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn scan<T: Message + Default>(&self, prefix: &[u8]) -> Result<Vec<T>, StateError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.sm(), IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(T::decode(v.as_ref())?);
        }
        Ok(out)
    }
}
