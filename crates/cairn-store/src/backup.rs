//! Backups: a point-in-time copy of the store in etcd's snapshot format
//! (what `Maintenance.Snapshot` streams), and restoring one into the data
//! directory of a new member (what `cairn snapshot restore` does).
//!
//! A backup is the data region's state at one revision — a linearizable
//! view, so it holds every write acknowledged before it was asked for —
//! written by `cairn_mvcc::snapshot::export` as the bbolt file etcd keeps,
//! into an unnamed temporary file under the data directory (gone when
//! closed, even after a crash), from which the caller streams it. Reads
//! and writes go on meanwhile: the view is an engine snapshot.
//!
//! Restoring imports such a file — Cairn's, or one `etcdctl snapshot save`
//! took from etcd — into a fresh engine and records the restored revisions
//! as the data region's applied state, with no Raft state at all: the
//! member then starts as any new member does (`--initial-cluster-state
//! new`), its first log entries applied on top of the restored keys. Every
//! member of the new cluster restores the same file, so they start equal,
//! as etcd's members do after `etcdutl snapshot restore`.
//!
//! With many regions, a backup will cover each at one revision (a TSO
//! timestamp read across regions); today there is one data region.

use std::io::{Seek, Write};
use std::path::Path;
use std::sync::Arc;

use cairn_mvcc::snapshot;
use cairn_storage::bolt::Reader;
use cairn_storage::{Engine, FjallEngine};

use crate::node::{Node, DATA_REGION};
use crate::{Error, Result};

/// A written backup, ready to be read from the start.
pub struct Backup {
    pub file: std::fs::File,
    /// Bytes in the file.
    pub size: u64,
    /// The revision it holds the store at.
    pub revision: i64,
}

impl Node {
    /// Writes a backup of the data region (see the module essay).
    pub async fn backup(&self) -> Result<Backup> {
        let (view, revs) = self.linearizable_view(DATA_REGION).await?;
        let dir = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<Backup> {
            let io = |e: std::io::Error| Error::Internal(format!("snapshot: {e}"));
            let file = tempfile::tempfile_in(&dir).map_err(io)?;
            let out = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut out = snapshot::export(&*view, revs, out)?;
            out.flush().map_err(io)?;
            let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
            let size = file.metadata().map_err(io)?.len();
            file.rewind().map_err(io)?;
            Ok(Backup {
                file,
                size,
                revision: revs.current,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("snapshot: {e}")))?
    }
}

/// What a restore wrote.
pub type Restored = snapshot::Imported;

/// Restores the etcd-format database `db` (its trailing checksum already
/// checked or stripped by the caller; bytes after the last page are
/// ignored) into a new member's `data_dir`, which must not exist yet.
pub fn restore(db: std::fs::File, data_dir: &Path) -> Result<Restored> {
    if data_dir.exists() {
        return Err(Error::Internal(format!(
            "data-dir {:?} exists",
            data_dir.display()
        )));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| Error::Internal(e.to_string()))?;
    let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(data_dir.join("db"))?);
    let reader = Reader::open(Box::new(db))?;
    let got = snapshot::import(&reader, &*engine)?;
    cairn_raft::seed_restored(&*engine, DATA_REGION, got.revisions)?;
    Ok(got)
}
