//! A replica's write load, counted as it applies: write transactions,
//! bytes put, and a sample of the keys written (put or deleted). The node's split
//! checker reads it — bytes to decide when to measure the region again,
//! the rate and the keys to split a region that takes too many writes at
//! the key that divides them (TiKV's load-based split).
//!
//! Bytes count once the entry that wrote them is published
//! ([`WriteLoad::settle`], called by the apply task after each entry's
//! write): so a view of the region taken after reading [`WriteLoad::bytes`]
//! holds every byte counted — the split checker's bound on the size now
//! (its size when measured plus the bytes written since) relies on it.
//!
//! Counting costs the apply path three relaxed atomic adds per write; one
//! write in [`SAMPLE_EVERY`] also copies its first key into a short ring
//! under an uncontended lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_storage::keys::Space;
use cairn_storage::{Op, WriteBatch};

/// One write in this many has its key sampled.
pub const SAMPLE_EVERY: u64 = 4;
/// Sampled keys kept (the most recent).
pub const SAMPLES_KEPT: usize = 256;

/// See the module essay.
#[derive(Default)]
pub struct WriteLoad {
    writes: AtomicU64,
    bytes: AtomicU64,
    /// Bytes of the entry being applied, not published yet.
    pending: AtomicU64,
    keys: parking_lot::Mutex<VecDeque<Vec<u8>>>,
}

impl WriteLoad {
    /// Counts one applied write transaction whose engine writes are
    /// `batch`.
    pub fn record(&self, batch: &WriteBatch) {
        let mut bytes = 0u64;
        let mut first = None;
        for op in &batch.ops {
            let key = match op {
                Op::Put(k, v) => {
                    bytes += (k.len() + v.len()) as u64;
                    k
                }
                Op::Delete(k) => k,
                Op::DeleteRange(..) => continue,
            };
            if first.is_none() {
                // Not decode_latest: its error for every other key
                // formats the key (measured in the write path's cost).
                first = match key.split_first() {
                    Some((&space, user)) if space == Space::MvccLatest as u8 => Some(user),
                    _ => None,
                };
            }
        }
        self.pending.fetch_add(bytes, Ordering::Relaxed);
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(SAMPLE_EVERY) {
            if let Some(key) = first {
                let mut keys = self.keys.lock();
                if keys.len() == SAMPLES_KEPT {
                    keys.pop_front();
                }
                keys.push_back(key.to_vec());
            }
        }
    }

    /// Counts the bytes recorded since the last call: the entry that
    /// wrote them is published.
    pub fn settle(&self) {
        let pending = self.pending.swap(0, Ordering::Relaxed);
        if pending > 0 {
            self.bytes.fetch_add(pending, Ordering::Relaxed);
        }
    }

    /// Write transactions applied since the replica started.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Bytes those writes put into the engine (every version, record and
    /// index entry: more than the data they add), once published.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The sampled keys, oldest first, and forgets them (the ring keeps
    /// the last [`SAMPLES_KEPT`] until taken).
    pub fn take_sampled_keys(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.keys.lock()).into()
    }
}

#[cfg(test)]
mod tests {
    use cairn_storage::keys::Key;

    use super::*;

    #[test]
    fn counts_writes_and_bytes_and_samples_written_keys() {
        let load = WriteLoad::default();
        for i in 0..(SAMPLE_EVERY * 3) {
            let mut b = WriteBatch::new();
            b.put(vec![0x13, 1, 2], b"x".to_vec());
            let key = format!("k{i}");
            b.put(
                Key::MvccLatest {
                    key: key.as_bytes(),
                }
                .encode(),
                b"vv".to_vec(),
            );
            b.delete(b"gone".to_vec());
            load.record(&b);
        }
        assert_eq!(load.writes(), SAMPLE_EVERY * 3);
        assert_eq!(load.bytes(), 0, "not published yet");
        load.settle();
        // Puts only: the index entry (3 + 1) and the latest record (the
        // space byte, the key, 2); the delete adds nothing.
        let want: usize = (0..SAMPLE_EVERY * 3)
            .map(|i| 4 + 1 + format!("k{i}").len() + 2)
            .sum();
        assert_eq!(load.bytes(), want as u64);
        let keys = load.take_sampled_keys();
        let want: Vec<Vec<u8>> = (0..3)
            .map(|j| format!("k{}", j * SAMPLE_EVERY).into_bytes())
            .collect();
        assert_eq!(keys, want);
        assert!(load.take_sampled_keys().is_empty(), "taken");
    }
}
