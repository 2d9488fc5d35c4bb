//! openraft's own storage test suite, run against berth's rocksdb log store
//! and state machine.

#![allow(clippy::result_large_err)]

use berth_server::raft::store::{self, LogStore, StateMachine};
use berth_server::raft::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = store::open(dir.path()).expect("opening rocksdb");
        let (log, sm, _reader) = store::split(db).expect("splitting the store");
        Ok((dir, log, sm))
    }
}

#[test]
fn rocksdb_store_passes_the_openraft_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(RocksBuilder)
}
