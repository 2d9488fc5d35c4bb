//! One Raft entry's changes to the state-machine rows, applied as one
//! rocksdb batch. Reads see the entry's own earlier writes, so the commands
//! of a batched entry apply one after another as if each had its own entry,
//! and yet the entry lands whole or not at all.

use std::collections::BTreeMap;

use rocksdb::{ColumnFamily, Direction, IteratorMode, ReadOptions, WriteBatch, DB};

/// Pending writes over the state column family.
pub struct Tx<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
    batch: WriteBatch,
    /// What this entry wrote so far: a value, or `None` for a delete.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    pub fn new(db: &'a DB, cf: &'a ColumnFamily) -> Self {
        Self {
            db,
            cf,
            batch: WriteBatch::default(),
            pending: BTreeMap::new(),
        }
    }

    /// The row as this entry sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.db.get_cf(self.cf, key),
        }
    }

    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.batch.put_cf(self.cf, key, value);
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.batch.delete_cf(self.cf, key);
        self.pending.insert(key.to_vec(), None);
    }

    /// Deletes every row in [from, to), stored or written by this entry,
    /// one key at a time, so that the entry's later reads see the deletes.
    pub fn delete_range(&mut self, from: &[u8], to: &[u8]) -> Result<(), rocksdb::Error> {
        let mut keys = Vec::new();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        for item in
            self.db
                .iterator_cf_opt(self.cf, ro, IteratorMode::From(from, Direction::Forward))
        {
            keys.push(item?.0.to_vec());
        }
        keys.extend(
            self.pending
                .range(from.to_vec()..to.to_vec())
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.clone()),
        );
        for k in keys {
            self.delete(k);
        }
        Ok(())
    }

    /// The batch, to which the caller may add rows of other column
    /// families before writing it.
    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_the_entrys_own_writes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), ["sm"]).unwrap();
        let cf = db.cf_handle("sm").unwrap();
        db.put_cf(cf, b"a/1", b"stored").unwrap();
        db.put_cf(cf, b"a/2", b"stored").unwrap();
        db.put_cf(cf, b"b/1", b"stored").unwrap();
        let mut tx = Tx::new(&db, cf);
        assert_eq!(tx.get(b"a/1").unwrap().as_deref(), Some(&b"stored"[..]));
        tx.put(b"a/1", b"new");
        tx.put(b"a/3", b"new");
        assert_eq!(tx.get(b"a/1").unwrap().as_deref(), Some(&b"new"[..]));
        tx.delete_range(b"a/", b"a0").unwrap();
        for k in [&b"a/1"[..], b"a/2", b"a/3"] {
            assert_eq!(tx.get(k).unwrap(), None);
        }
        // Nothing is stored until the batch is written.
        assert!(db.get_cf(cf, b"a/2").unwrap().is_some());
        db.write(tx.into_batch()).unwrap();
        assert!(db.get_cf(cf, b"a/1").unwrap().is_none());
        assert!(db.get_cf(cf, b"a/2").unwrap().is_none());
        assert!(db.get_cf(cf, b"a/3").unwrap().is_none());
        assert!(db.get_cf(cf, b"b/1").unwrap().is_some());
    }
}
