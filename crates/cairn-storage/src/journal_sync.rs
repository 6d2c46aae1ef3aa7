//! [`JournalSync`]: fdatasync of fjall's journal without holding fjall's
//! journal lock, so writes go on while the disk syncs.
//!
//! fjall's `Database::persist(SyncData)` runs the fdatasync inside the
//! journal writer's mutex, and every write — every region's Raft append,
//! every apply, every `save_committed` — takes that mutex. So while one
//! fsync runs, no region can even write its entries, and each blocked
//! write holds a Tokio worker. Measured, it cost less than feared: taking
//! the fsync out of the lock gained at most 1.08× on Txns across eight
//! regions, within noise (docs/benchmarks.md, session 26); it stays
//! because no write should wait for another's fsync.
//!
//! Here a sync is two steps. Under fjall's lock, `persist(Buffer)` moves
//! the journal's buffered bytes into the OS (fast: a `write`). Then, with
//! the lock released, this module fdatasyncs the **active journal file**
//! through its own descriptor (an fsync covers the file's dirty pages
//! whichever descriptor wrote them). Writes that land meanwhile wait for
//! the next sync, which the node's log writer issues for all of them at
//! once.
//!
//! Why it covers every byte written before the call: those bytes are in
//! the file that was active when `persist(Buffer)` ran, call it A. The file
//! synced is the newest journal found afterwards. If it is A, the fsync
//! covers them. If it is newer, fjall rotated after the flush, and a
//! rotation seals A with `sync_all` under the lock — after the flush, so
//! with the bytes in it. Journal IDs only grow (`{id}.jnl` in the
//! database's folder), and only sealed files are deleted.
//!
//! When the newest journal is one this syncer has not synced before (the
//! first sync, or after a rotation) it syncs through fjall's own locked
//! path once, which syncs the file fjall really writes: a rotation that
//! failed halfway (its new file created, then an I/O error) leaves a newer
//! file that fjall never wrote to. Anything else unexpected (the folder
//! unreadable, a journal vanishing before it opens) falls back to that
//! path too: slower, never wrong.
//!
//! A failed fdatasync is final: the kernel may have dropped the dirty
//! pages it could not write, and a retry could then "succeed" without
//! them (the 2018 PostgreSQL fsync lesson), so every later sync fails, and
//! so does every later write (`FjallEngine::write` asks
//! [`JournalSync::check`] first) — as fjall poisons its database on a
//! failed persist. The fdatasyncs are serialized among themselves (not
//! with fjall's writes): Linux reports a writeback error once per open
//! file, so of two syncs at once only one would see it, and the other
//! would answer success for pages that were dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use fjall::{Database, PersistMode};
use parking_lot::Mutex;

use crate::{Error, Result};

/// Syncs one fjall database's journal outside its lock (see the module).
#[derive(Debug)]
pub(crate) struct JournalSync {
    /// The database's folder: fjall keeps its journals there.
    dir: PathBuf,
    /// The newest journal synced so far: its ID and a descriptor. Held
    /// across the fdatasync (see the module essay).
    open: Mutex<Option<(u64, File)>>,
    /// Set once an fdatasync failed.
    failed: AtomicBool,
}

impl JournalSync {
    /// Syncs the journals of the database in `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            // As fjall holds it: a later change of directory cannot move it.
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            open: Mutex::new(None),
            failed: AtomicBool::new(false),
        }
    }

    /// An error if an fdatasync failed: nothing may be written since.
    pub(crate) fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Engine(
                "an earlier fsync of the journal failed: restart the member".into(),
            ));
        }
        Ok(())
    }

    /// Makes every write `db` accepted before this call durable.
    pub(crate) fn sync(&self, db: &Database) -> Result<()> {
        self.check()?;
        db.persist(PersistMode::Buffer)?;
        let newest = newest_journal(&self.dir);
        let mut open = self.open.lock();
        // Checked again under the lock: a sync that failed meanwhile
        // consumed the error this one would have seen.
        self.check()?;
        let file = match (newest, &*open) {
            (Some(id), Some((have, file))) if *have == id => file,
            (Some(id), have) if have.as_ref().is_none_or(|(have, _)| *have < id) => {
                // Not synced here before: once through fjall (see the
                // module essay), then by the descriptor.
                let Ok(file) = File::open(self.dir.join(format!("{id}.jnl"))) else {
                    return Ok(db.persist(PersistMode::SyncData)?);
                };
                db.persist(PersistMode::SyncData)?;
                *open = Some((id, file));
                return Ok(());
            }
            // The folder unreadable, or a journal older than one synced.
            _ => return Ok(db.persist(PersistMode::SyncData)?),
        };
        file.sync_data().map_err(|e| {
            self.failed.store(true, Ordering::SeqCst);
            Error::Engine(format!("fsync of the journal: {e}"))
        })
    }

    /// The ID of the journal this syncer fdatasyncs (tests).
    #[cfg(test)]
    pub(crate) fn synced_id(&self) -> Option<u64> {
        self.open.lock().as_ref().map(|(id, _)| *id)
    }
}

/// The highest `{id}.jnl` file in `dir` (None: none, or the folder could
/// not be read whole).
fn newest_journal(dir: &Path) -> Option<u64> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()? {
        let e = e.ok()?;
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if e.file_type().ok()?.is_file() {
            newest = newest.max(Some(id));
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_journal_is_the_highest_id() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_journal(dir.path()), None);
        for name in ["0.jnl", "9.jnl", "10.jnl", "11.txt", "x.jnl", "version"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("12.jnl")).unwrap();
        assert_eq!(newest_journal(dir.path()), Some(10), "files only");
    }

    #[test]
    fn a_sync_fdatasyncs_the_active_journal_through_its_own_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path())
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let ks = db
            .keyspace("s20", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let syncer = JournalSync::new(dir.path());
        ks.insert("j", "w").unwrap();
        syncer.sync(&db).unwrap(); // the first: through fjall
        let active = newest_journal(dir.path()).unwrap();
        assert_eq!(syncer.synced_id(), Some(active));
        ks.insert("k", "v").unwrap();
        syncer.sync(&db).unwrap(); // by the descriptor
                                   // What the sync covered is in the journal file, where a restart
                                   // replays it from.
        drop((ks, db));
        let db = Database::builder(dir.path()).open().unwrap();
        let ks = db
            .keyspace("s20", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        assert_eq!(ks.get("j").unwrap().as_deref(), Some(&b"w"[..]));
        assert_eq!(ks.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
