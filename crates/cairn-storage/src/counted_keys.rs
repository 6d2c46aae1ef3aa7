//! [`CountedKeys`]: one keyspace's keys held in memory, so that a snapshot
//! counts a span of them without reading the engine.
//!
//! Why: etcd answers a Range's `count` — and `more` past a `limit`, which
//! every paginated list asks — from its in-memory key index. An LSM scan of
//! the same span's keys costs hundreds of nanoseconds a key (the merge of
//! memtables and tables, a decoded block per few dozen keys), so a page of
//! ten keys from a span of 60,000 spent nearly all its time counting the
//! rest (docs/benchmarks.md, "Session 36": 0.17× etcd). Here counting
//! `[lo, hi)` costs a binary search in each end's chunk and one step per
//! chunk between.
//!
//! Shape: the keys, ascending, cut into chunks of at most [`MAX`] keys
//! (and about [`MAX_BYTES`] bytes), each packed into one buffer
//! ([`chunk::Chunk`]), in a persistent ordered map keyed by each chunk's
//! first key (`imbl`'s path-copying B-tree). A clone is O(1) and shares
//! everything, so each engine snapshot carries the set as of its own
//! moment for the price of a pointer. A change copies the map's path to
//! the chunk it touches and, if a snapshot still shares that chunk, the
//! chunk (two `memcpy`s of at most a few KiB). A chunk that grows past its
//! bounds is cut into half-full ones; one that shrinks below [`MIN`] keys
//! joins a neighbour it fits with. So chunks hold `MAX / 2` to `MAX` keys as keys
//! come in, and deletes leave one smaller than [`MIN`] only beside
//! neighbours too full to take it in. The bounds weigh the two costs: a
//! write copies up to a chunk (under the engine's commit lock), and a
//! count steps once per chunk.
//!
//! Memory: every key's bytes once, plus a 4-byte offset and the buffers'
//! slack (measured: docs/benchmarks.md, "Session 37"); a snapshot held
//! long keeps the chunks it shares alive. etcd keeps more per key (its
//! index holds each key's revision history).

mod chunk;

use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

use chunk::Chunk;

type Key = Arc<[u8]>;

/// Most keys in one chunk; a longer one splits in halves.
const MAX: usize = 128;
/// Most bytes of keys in one chunk of two keys or more (the copy a write
/// may make); a larger one splits in halves.
const MAX_BYTES: usize = 8 << 10;
/// A chunk shorter than this joins a neighbour it fits with.
const MIN: usize = MAX / 8;

/// A persistent sorted set of byte keys with range counts (see the module).
#[derive(Clone, Default)]
pub(crate) struct CountedKeys {
    /// Chunk first key → the chunk (non-empty, ascending, disjoint).
    chunks: OrdMap<Key, Arc<Chunk>>,
    len: u64,
}

fn too_big(c: &Chunk) -> bool {
    c.len() > MAX || (c.len() > 1 && c.bytes() > MAX_BYTES)
}

/// Ascending keys cut into chunks half full (at most `MAX / 2` keys and,
/// but for a single longer key, `MAX_BYTES / 2` bytes): what a load
/// starts with and what a chunk grown too big splits into.
struct Pieces {
    done: Vec<Chunk>,
    open: Chunk,
}

impl Pieces {
    fn new() -> Self {
        Self {
            done: Vec::new(),
            open: Chunk::default(),
        }
    }

    fn push(&mut self, key: &[u8]) {
        let full = self.open.len() == MAX / 2 || self.open.bytes() + key.len() > MAX_BYTES / 2;
        if self.open.len() > 0 && full {
            self.done.push(std::mem::take(&mut self.open));
        }
        self.open.push(key);
    }

    /// The chunks; a last one under `MIN` keys joins the one before when
    /// it fits (a split of `MAX + 1` keys would leave one key alone).
    fn finish(mut self) -> Vec<Chunk> {
        match self.done.last_mut() {
            Some(before) if self.open.len() < MIN => {
                let mut joined = before.clone();
                joined.append(&self.open);
                if too_big(&joined) {
                    self.done.push(self.open);
                } else {
                    *before = joined;
                }
            }
            _ if self.open.len() > 0 => self.done.push(self.open),
            _ => {}
        }
        self.done
    }
}

impl CountedKeys {
    /// The set of `keys`, which must be ascending and distinct.
    pub(crate) fn from_sorted(keys: impl Iterator<Item = Vec<u8>>) -> Self {
        let mut set = Self::default();
        let mut pieces = Pieces::new();
        let mut last: Option<Vec<u8>> = None;
        for key in keys {
            debug_assert!(last.as_ref().is_none_or(|l| *l < key));
            pieces.push(&key);
            if pieces.done.len() > 16 {
                for chunk in std::mem::take(&mut pieces.done) {
                    set.add_chunk(chunk);
                }
            }
            last = Some(key);
        }
        for chunk in pieces.finish() {
            set.add_chunk(chunk);
        }
        set
    }

    fn add_chunk(&mut self, chunk: Chunk) {
        self.len += chunk.len() as u64;
        self.put_chunk(Arc::new(chunk));
    }

    fn put_chunk(&mut self, chunk: Arc<Chunk>) {
        self.chunks.insert(chunk.first().into(), chunk);
    }

    /// How many keys the set holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The first key of the chunk where `key` belongs: the last chunk that
    /// starts at or before it, else (a key below every chunk) the first.
    fn home(&self, key: &[u8]) -> Option<Key> {
        match self.chunks.get_prev(key) {
            Some((first, _)) => Some(first.clone()),
            None => self.chunks.get_min().map(|(first, _)| first.clone()),
        }
    }

    fn chunk(&self, first: &Key) -> &Chunk {
        self.chunks.get(first).expect("a chunk under its first key")
    }

    /// Adds `key` (nothing if present).
    pub(crate) fn insert(&mut self, key: &[u8]) {
        let Some(first) = self.home(key) else {
            let mut chunk = Chunk::default();
            chunk.push(key);
            self.add_chunk(chunk);
            return;
        };
        let Err(at) = self.chunk(&first).search(key) else {
            return;
        };
        let mut chunk = self.chunks.remove(&first).expect("home chunk");
        Arc::make_mut(&mut chunk).insert(at, key);
        self.len += 1;
        if too_big(&chunk) {
            let mut pieces = Pieces::new();
            for i in 0..chunk.len() {
                pieces.push(chunk.key(i));
            }
            for piece in pieces.finish() {
                self.put_chunk(Arc::new(piece));
            }
        } else {
            self.put_chunk(chunk);
        }
    }

    /// Takes `key` out (nothing if absent).
    pub(crate) fn remove(&mut self, key: &[u8]) {
        let Some(first) = self.home(key) else {
            return;
        };
        let Ok(at) = self.chunk(&first).search(key) else {
            return;
        };
        let mut chunk = self.chunks.remove(&first).expect("home chunk");
        Arc::make_mut(&mut chunk).remove(at);
        self.len -= 1;
        if chunk.len() == 0 {
            return;
        }
        if chunk.len() < MIN {
            let fits = |(first, other): (&Key, &Arc<Chunk>)| {
                let joined =
                    chunk.len() + other.len() <= MAX && chunk.bytes() + other.bytes() <= MAX_BYTES;
                joined.then(|| first.clone())
            };
            let next = self
                .chunks
                .range::<_, [u8]>((Bound::Excluded(chunk.last()), Bound::Unbounded))
                .next()
                .and_then(fits);
            let prev = self.chunks.get_prev(chunk.first()).and_then(fits);
            if let Some(next) = next {
                let next = self.chunks.remove(&next).expect("next chunk");
                Arc::make_mut(&mut chunk).append(&next);
            } else if let Some(prev) = prev {
                let mut joined = self.chunks.remove(&prev).expect("previous chunk");
                Arc::make_mut(&mut joined).append(&chunk);
                chunk = joined;
            }
        }
        self.put_chunk(chunk);
    }

    /// How many keys lie between `lo` and `hi`.
    pub(crate) fn count(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> u64 {
        let from = match lo {
            Bound::Included(k) | Bound::Excluded(k) => match self.home(k) {
                Some(first) => first,
                None => return 0,
            },
            Bound::Unbounded => match self.chunks.get_min() {
                Some((first, _)) => first.clone(),
                None => return 0,
            },
        };
        let mut n = 0u64;
        for (i, (first, keys)) in self
            .chunks
            .range::<_, [u8]>((Bound::Included(&*from), Bound::Unbounded))
            .enumerate()
        {
            let past_end = match hi {
                Bound::Included(h) => **first > *h,
                Bound::Excluded(h) => **first >= *h,
                Bound::Unbounded => false,
            };
            if past_end {
                break;
            }
            // Only the first chunk can hold keys below `lo`, and only one
            // whose last key reaches `hi` keys past it.
            let start = match lo {
                _ if i > 0 => 0,
                Bound::Included(l) => keys.partition_point(|k| k < l),
                Bound::Excluded(l) => keys.partition_point(|k| k <= l),
                Bound::Unbounded => 0,
            };
            let end = match hi {
                Bound::Included(h) if keys.last() > h => keys.partition_point(|k| k <= h),
                Bound::Excluded(h) if keys.last() >= h => keys.partition_point(|k| k < h),
                _ => keys.len(),
            };
            n += end.saturating_sub(start) as u64;
        }
        n
    }
}

/// `b` borrowed as a bound on byte slices.
pub(crate) fn as_slices(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn key(rng: &mut fastrand::Rng, space: u32) -> Vec<u8> {
        format!("k{:05}", rng.u32(0..space)).into_bytes()
    }

    fn bound(rng: &mut fastrand::Rng, space: u32) -> Bound<Vec<u8>> {
        match rng.u8(0..5) {
            0 => Bound::Unbounded,
            1 | 2 => Bound::Included(key(rng, space)),
            _ => Bound::Excluded(key(rng, space)),
        }
    }

    fn model_count(model: &BTreeSet<Vec<u8>>, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> u64 {
        model
            .iter()
            .filter(|k| match lo {
                Bound::Included(l) => *k >= l,
                Bound::Excluded(l) => *k > l,
                Bound::Unbounded => true,
            })
            .filter(|k| match hi {
                Bound::Included(h) => *k <= h,
                Bound::Excluded(h) => *k < h,
                Bound::Unbounded => true,
            })
            .count() as u64
    }

    /// The chunks' invariants: non-empty, at most MAX, keyed by their
    /// first key, ascending and disjoint, and `len` their total.
    fn check_shape(set: &CountedKeys) {
        let mut prev: Option<Vec<u8>> = None;
        let mut total = 0u64;
        for (first, keys) in set.chunks.iter() {
            assert!(keys.len() > 0 && !too_big(keys), "chunk of {}", keys.len());
            assert_eq!(&**first, keys.first());
            for i in 1..keys.len() {
                assert!(keys.key(i - 1) < keys.key(i));
            }
            assert!(prev.as_deref().is_none_or(|p| p < keys.first()));
            prev = Some(keys.last().to_vec());
            total += keys.len() as u64;
        }
        assert_eq!(total, set.len());
    }

    #[test]
    fn counts_match_a_sorted_set_through_inserts_and_removes() {
        for seed in 0..20u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            // Small key spaces force duplicate inserts and absent removes;
            // large ones grow chunks past MAX and split them.
            let space = [50, 2_000, 20_000][seed as usize % 3];
            let mut set = CountedKeys::default();
            let mut model = BTreeSet::new();
            for step in 0..6_000 {
                let k = key(&mut rng, space);
                // Grow first, then mostly shrink: chunks split, then merge.
                let grow = if step < 3_000 { 7 } else { 3 };
                if rng.u8(0..10) < grow {
                    set.insert(&k);
                    model.insert(k);
                } else {
                    set.remove(&k);
                    model.remove(&k);
                }
                if step % 97 == 0 {
                    check_shape(&set);
                    for _ in 0..20 {
                        let (lo, hi) = (bound(&mut rng, space), bound(&mut rng, space));
                        assert_eq!(
                            set.count(as_slices(&lo), as_slices(&hi)),
                            model_count(&model, &lo, &hi),
                            "seed {seed} step {step} {lo:?}..{hi:?}"
                        );
                    }
                }
            }
            check_shape(&set);
            assert_eq!(set.len(), model.len() as u64);
        }
    }

    #[test]
    fn long_keys_split_chunks_by_bytes() {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut set = CountedKeys::default();
        let mut model = BTreeSet::new();
        for _ in 0..600 {
            let mut k = key(&mut rng, 400);
            k.resize(k.len() + rng.usize(0..3_000), b'x');
            if rng.u8(0..4) == 0 {
                set.remove(&k);
                model.remove(&k);
            } else {
                set.insert(&k);
                model.insert(k);
            }
        }
        check_shape(&set);
        let all = (Bound::Unbounded, Bound::Unbounded);
        assert_eq!(set.count(all.0, all.1), model.len() as u64);
        assert!(set.chunks.len() as u64 >= set.len() * 1_500 / MAX_BYTES as u64);
    }

    #[test]
    fn a_clone_keeps_its_keys_while_the_original_changes() {
        let keys: Vec<Vec<u8>> = (0..3_000u32)
            .map(|i| format!("k{i:05}").into_bytes())
            .collect();
        let mut set = CountedKeys::from_sorted(keys.iter().cloned());
        check_shape(&set);
        let kept = set.clone();
        for k in keys.iter().step_by(2) {
            set.remove(k);
        }
        set.insert(b"a");
        set.insert(b"z");
        check_shape(&set);
        check_shape(&kept);
        let all = (Bound::Unbounded, Bound::Unbounded);
        assert_eq!(kept.count(all.0, all.1), 3_000);
        assert_eq!(set.count(all.0, all.1), 1_502);
        let (lo, hi) = (&b"k00100"[..], &b"k00200"[..]);
        assert_eq!(kept.count(Bound::Included(lo), Bound::Excluded(hi)), 100);
        assert_eq!(set.count(Bound::Included(lo), Bound::Excluded(hi)), 50);
    }

    #[test]
    fn an_empty_or_inverted_span_counts_nothing() {
        let set = CountedKeys::from_sorted((0..10u8).map(|i| vec![b'a' + i]));
        assert_eq!(set.count(Bound::Included(b"e"), Bound::Excluded(b"c")), 0);
        assert_eq!(set.count(Bound::Excluded(b"c"), Bound::Included(b"c")), 0);
        assert_eq!(set.count(Bound::Included(b"c"), Bound::Included(b"c")), 1);
        assert_eq!(
            CountedKeys::default().count(Bound::Unbounded, Bound::Unbounded),
            0
        );
    }
}
