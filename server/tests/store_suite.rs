//! openraft's own storage test suite, run against berth's log store (the
//! segment log, with its metadata in rocksdb) and rocksdb state machine.

#![allow(clippy::result_large_err)]

use berth_server::raft::store::{self, LogStore, StateMachine};
use berth_server::raft::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = store::open(&dir.path().join("raft")).expect("opening rocksdb");
        let wal =
            store::open_wal(&db, &dir.path().join("raft-log"), 1 << 20).expect("opening the log");
        let (log, sm, _reader) =
            store::split(db, wal, 0, dir.path().join("snapshots")).expect("splitting the store");
        Ok((dir, log, sm))
    }
}

#[tokio::test]
async fn the_store_passes_the_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}
