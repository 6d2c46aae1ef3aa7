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
//! The auth store goes along (users, roles, whether auth is on), in the
//! buckets etcd keeps it in (`cairn_auth::etcd_schema`), read from the meta
//! region caught up when the backup is asked for; a restore seeds the new
//! member's meta region with it. So a secured cluster's backup restores
//! secured, from etcd's backups too.
//!
//! With many data regions, a backup holds each at one revision: the
//! region holding the lease table caught up at a confirmed TSO timestamp
//! and its revision R taken with its lease records, then every region
//! caught up to R (as a Range across regions is, `node::range_across`) and
//! one engine view taken after — the regions share this node's engine —
//! exported without the versions above R (`node::backup_view`). A restore
//! makes it one data region again.

use std::io::{Seek, Write};
use std::path::Path;
use std::sync::Arc;

use cairn_mvcc::snapshot;
use cairn_storage::bolt::Reader;
use cairn_storage::{Engine, FjallEngine};

use cairn_auth::etcd_schema;

use crate::node::{Node, DATA_REGION, META_REGION};
use crate::{Error, Result};

/// Backups a member writes or streams at once; more wait their turn. Each
/// is a copy of the store in a temporary file until it is dropped, so
/// many at once could fill the disk the store needs.
pub const AT_ONCE: usize = 2;

/// A written backup, ready to be read from the start. Counts against
/// [`AT_ONCE`] until dropped.
pub struct Backup {
    pub file: std::fs::File,
    /// Bytes in the file.
    pub size: u64,
    /// The revision it holds the store at.
    pub revision: i64,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl Node {
    /// Writes a backup of the data region (see the module essay).
    pub async fn backup(&self) -> Result<Backup> {
        let turn = self
            .backups
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Stopped)?;
        // Every auth change acknowledged before the backup was asked for.
        self.catch_up_auth().await?;
        let auth = self.meta_shared().with_applied(|a| a.auth.clone());
        // (By the first region's range, not by counting regions: a region
        // frozen for a merge holds no range for a while.)
        let one = if self.several_regions() {
            None
        } else {
            let (view, revs) = self.linearizable_view(DATA_REGION).await?;
            // Catching up may have applied the first split here: the
            // region's revision is then no cut of the store (the new
            // region's writes have their own timestamps), so it is taken
            // as across several regions.
            (!self.several_regions()).then_some((view, revs))
        };
        let (keys, leases, revs) = match one {
            Some((view, revs)) => (view.clone(), view, revs),
            None => {
                let views = self.views_for_backup().await?;
                (views.keys, views.leases, views.revs)
            }
        };
        let dir = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<Backup> {
            let io = |e: std::io::Error| Error::Internal(format!("snapshot: {e}"));
            let file = tempfile::tempfile_in(&dir).map_err(io)?;
            let out = std::io::BufWriter::with_capacity(1 << 20, file);
            let leases = cairn_mvcc::lease::list(&*leases)?;
            let extra = etcd_schema::to_buckets(&auth);
            let mut out = snapshot::export_with(&*keys, revs, leases, extra, out)?;
            out.flush().map_err(io)?;
            let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
            let size = file.metadata().map_err(io)?.len();
            file.rewind().map_err(io)?;
            Ok(Backup {
                file,
                size,
                revision: revs.current,
                _turn: turn,
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
///
/// All or nothing: the store is built in a sibling directory and renamed
/// into place once complete, so a failed or interrupted restore leaves no
/// `data_dir` for `cairn serve` to start on half-restored.
pub fn restore(db: std::fs::File, data_dir: &Path) -> Result<Restored> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Internal(format!("{what}: {e}"));
    if data_dir.exists() {
        return Err(Error::Internal(format!(
            "data-dir {:?} exists",
            data_dir.display()
        )));
    }
    let reader = Reader::open(Box::new(db))?;
    let name = data_dir
        .file_name()
        .ok_or_else(|| Error::Internal(format!("bad data-dir {:?}", data_dir.display())))?;
    let building = data_dir.with_file_name(format!(".{}.restoring", name.to_string_lossy()));
    if building.exists() {
        // Left by an interrupted restore.
        std::fs::remove_dir_all(&building).map_err(|e| fail("clearing", &e))?;
    }
    std::fs::create_dir_all(&building).map_err(|e| fail("creating", &e))?;
    let built = (|| -> Result<Restored> {
        let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(building.join("db"))?);
        let got = snapshot::import(&reader, &*engine)?;
        cairn_raft::seed_restored(&*engine, DATA_REGION, got.revisions)?;
        let bucket = |name: &[u8]| -> Result<etcd_schema::Entries> {
            let mut out = Vec::new();
            reader.for_each(name, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(())
            })?;
            Ok(out)
        };
        let auth = etcd_schema::from_buckets(
            &bucket(etcd_schema::AUTH)?,
            &bucket(etcd_schema::USERS)?,
            &bucket(etcd_schema::ROLES)?,
        )
        .map_err(|e| Error::Internal(format!("snapshot: auth: {e}")))?;
        cairn_raft::seed_restored_meta(&*engine, META_REGION, auth, got.revisions.current)?;
        Ok(got)
    })();
    match built {
        Ok(got) => {
            std::fs::rename(&building, data_dir).map_err(|e| fail("renaming", &e))?;
            if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| fail("syncing", &e))?;
            }
            Ok(got)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use cairn_storage::bolt::Writer;

    use super::*;

    #[test]
    fn a_failed_restore_leaves_no_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        // A bbolt file whose `key` bucket holds something that is not a
        // revision: found only after some writes.
        let mut w = Writer::new(tempfile::tempfile().unwrap()).unwrap();
        w.bucket(b"key", [Ok((b"not a revision".to_vec(), b"x".to_vec()))])
            .unwrap();
        let mut file = w.finish().unwrap();
        file.flush().unwrap();
        file.rewind().unwrap();
        let target = dir.path().join("m1.cairn");
        let e = restore(file, &target).unwrap_err();
        assert!(e.to_string().contains("revision key"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
