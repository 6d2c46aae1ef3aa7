//! openraft's own storage conformance suite, run on Cairn's log store and
//! state machine (over the fjall engine and over the memory engine).

use std::sync::Arc;

use cairn_raft::{
    LogStore, LogWriter, RegionKind, RegionShared, SnapshotDir, StateMachine, TypeConfig,
};
use cairn_storage::{Engine, FjallEngine, MemoryEngine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder {
    fjall: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Option<tempfile::TempDir>> for Builder {
    async fn build(
        &self,
    ) -> Result<(Option<tempfile::TempDir>, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = if self.fjall {
            Arc::new(FjallEngine::open(dir.path().join("db")).unwrap())
        } else {
            Arc::new(MemoryEngine::new())
        };
        let snapshots = Arc::new(SnapshotDir::open(dir.path().join("snap")).unwrap());
        let writer = LogWriter::start(engine.clone()).unwrap();
        let log = LogStore::new(7, engine.clone(), writer);
        let sm =
            StateMachine::new(RegionShared::load(7, RegionKind::Data, engine, snapshots).unwrap());
        Ok((Some(dir), log, sm))
    }
}

#[test]
fn openraft_suite_on_fjall() {
    Suite::test_all(Builder { fjall: true }).unwrap();
}

#[test]
fn openraft_suite_on_memory() {
    Suite::test_all(Builder { fjall: false }).unwrap();
}
