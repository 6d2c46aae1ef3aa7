//! The snapshot file format, and the directory snapshot files live in.
//!
//! A region's state is already durable in the engine, so a Raft snapshot
//! needs no copy of it on disk: "building" one (every `--snapshot-count`
//! entries) only makes the engine durable up to the applied index so the
//! log before it can be purged (see [`crate::snapshot_data`]). A file is
//! written only when a lagging follower needs the state sent: streamed
//! record by record from an engine snapshot to an unnamed temporary file,
//! read back chunk by chunk by the sender, and gone when dropped. (Until
//! 2026-11 every snapshot was a full copy written and fsynced to
//! `r{region}.snap`: an O(data) write every 10,000 entries, which showed in
//! the put p99 and doubled the disk footprint; see docs/benchmarks.md.)
//!
//! File format (all integers little-endian):
//!
//! ```text
//! "CAIRNSN1"                        8-byte magic
//! u32 len, postcard(Applied)        the applied record the data matches
//! { u32 klen, key, u32 vlen, value }*   the region's data pairs (`Share::scan` order)
//! u32 0xFFFF_FFFF                   end marker (a truncated file is an error)
//! ```
//!
//! Received snapshots go to an unnamed temporary file in the same
//! directory too, so nothing is left behind by a crash.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::codec::encode;
use crate::state_machine::Applied;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"CAIRNSN1";
const END: u32 = u32::MAX;

fn io(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}

/// Where one node writes its (temporary) snapshot files.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Uses (creating) `dir`. Files left by older versions (`*.tmp` of a
    /// crashed build, `r{region}.snap` full copies) are removed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io)?;
        for e in std::fs::read_dir(&dir).map_err(io)? {
            let p = e.map_err(io)?.path();
            if p.extension().is_some_and(|x| x == "tmp" || x == "snap") {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(Self { dir })
    }

    /// Writes a snapshot of `applied` and every pair of `data` to a new
    /// unnamed temporary file, returned positioned at offset 0. Not synced:
    /// it only lives while it is being sent.
    pub fn write(
        &self,
        applied: &Applied,
        data: impl Iterator<Item = cairn_storage::Result<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<File> {
        let mut w = BufWriter::with_capacity(1 << 20, self.temp_file()?);
        write_all(&mut w, applied, data)?;
        let mut f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok(f)
    }

    /// An unnamed temporary file in the directory (a snapshot being
    /// written to send, or being received); gone when closed.
    pub fn temp_file(&self) -> Result<File> {
        tempfile::tempfile_in(&self.dir).map_err(io)
    }
}

fn put_u32(w: &mut impl Write, n: u32) -> Result<()> {
    w.write_all(&n.to_le_bytes()).map_err(io)
}

fn write_all(
    w: &mut impl Write,
    applied: &Applied,
    data: impl Iterator<Item = cairn_storage::Result<(Vec<u8>, Vec<u8>)>>,
) -> Result<()> {
    w.write_all(MAGIC).map_err(io)?;
    let head = encode(applied)?;
    put_u32(w, head.len() as u32)?;
    w.write_all(&head).map_err(io)?;
    for item in data {
        let (k, v) = item?;
        put_u32(w, k.len() as u32)?;
        w.write_all(&k).map_err(io)?;
        put_u32(w, v.len() as u32)?;
        w.write_all(&v).map_err(io)?;
    }
    put_u32(w, END)
}

fn get_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(io)?;
    Ok(u32::from_le_bytes(b))
}

fn get_bytes(r: &mut impl Read, len: u32) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v).map_err(io)?;
    Ok(v)
}

fn read_header(r: &mut impl Read) -> Result<Applied> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(Error::Codec("not a Cairn snapshot (bad magic)".into()));
    }
    let len = get_u32(r)?;
    Applied::decode(&get_bytes(r, len)?)
}

/// The applied record at the start of snapshot bytes `data`, if they hold
/// it whole.
pub fn header_of(data: &[u8]) -> Option<Applied> {
    read_header(&mut std::io::Cursor::new(data)).ok()
}

/// Reads a whole snapshot from `f` (from offset 0): the applied record, and
/// each data pair handed to `pair` in file order.
pub fn read(f: &mut File, mut pair: impl FnMut(Vec<u8>, Vec<u8>)) -> Result<Applied> {
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let applied = read_header(&mut r)?;
    loop {
        let klen = get_u32(&mut r)?;
        if klen == END {
            return Ok(applied);
        }
        let k = get_bytes(&mut r, klen)?;
        let vlen = get_u32(&mut r)?;
        let v = get_bytes(&mut r, vlen)?;
        pair(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_and_truncation_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("r3.snap"), b"old full copy").unwrap();
        std::fs::write(tmp.path().join("r3-0.tmp"), b"crashed build").unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        let applied = Applied {
            current_revision: 42,
            ..Default::default()
        };
        let pairs = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), vec![7u8; 70_000]),
        ];
        let mut f = dir
            .write(&applied, pairs.clone().into_iter().map(Ok))
            .unwrap();
        let mut got = Vec::new();
        let back = read(&mut f, |k, v| got.push((k, v))).unwrap();
        assert_eq!(back.current_revision, 42);
        assert_eq!(got, pairs);

        // A truncated copy fails to read.
        let mut whole = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut whole).unwrap();
        let mut cut = dir.temp_file().unwrap();
        cut.write_all(&whole[..whole.len() - 2]).unwrap();
        assert!(read(&mut cut, |_, _| {}).is_err());
        // The record alone, from a first chunk holding it whole.
        assert_eq!(header_of(&whole[..64]).unwrap().current_revision, 42);
        assert!(header_of(&whole[..10]).is_none());
        assert!(header_of(b"not a snapshot at all").is_none());
        // Nothing is left in the directory: old files were removed, the
        // written and received files are unnamed.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
