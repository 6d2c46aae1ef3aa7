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
//! Shape: the keys, ascending, cut into chunks of at most [`MAX`] keys, in
//! a persistent ordered map keyed by each chunk's first key (`imbl`'s
//! path-copying B-tree). A clone is O(1) and shares everything, so each
//! engine snapshot carries the set as of its own moment for the price of a
//! pointer. A change copies the map's path to the chunk it touches and, if
//! a snapshot still shares that chunk, the chunk's key pointers (keys are
//! `Arc`s: no key bytes are copied). A chunk that grows past [`MAX`] splits
//! in two; one that shrinks below [`MIN`] joins a neighbour it fits with.
//! So chunks hold `MAX / 2` to `MAX` keys as keys come in, and deletes
//! leave one smaller than [`MIN`] only beside neighbours too full to take
//! it in. [`MAX`] weighs
//! the two costs: a write that touches a chunk a snapshot shares copies up
//! to [`MAX`] pointers (under the engine's commit lock), and a count steps
//! once per chunk.
//!
//! Memory: every key of the keyspace once, plus about 40 bytes a key (its
//! pointer, the `Arc`'s counts, allocator rounding); a snapshot held long
//! keeps the chunks it shares alive. etcd keeps more per key (its index
//! holds each key's revision history).

use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

type Key = Arc<[u8]>;
type Chunk = Arc<Vec<Key>>;

/// Most keys in one chunk; a longer one splits in halves.
const MAX: usize = 128;
/// A chunk shorter than this takes in its successor when both fit.
const MIN: usize = MAX / 8;

/// A persistent sorted set of byte keys with range counts (see the module).
#[derive(Clone, Default)]
pub(crate) struct CountedKeys {
    /// Chunk first key → the chunk (non-empty, ascending, disjoint).
    chunks: OrdMap<Key, Chunk>,
    len: u64,
}

impl CountedKeys {
    /// The set of `keys`, which must be ascending and distinct.
    pub(crate) fn from_sorted(keys: impl Iterator<Item = Vec<u8>>) -> Self {
        let mut set = Self::default();
        let mut chunk: Vec<Key> = Vec::with_capacity(MAX / 2);
        for key in keys {
            debug_assert!(set
                .chunks
                .get_max()
                .is_none_or(|(_, c)| *c[c.len() - 1] < *key));
            debug_assert!(chunk.last().is_none_or(|last| **last < *key));
            chunk.push(key.into());
            if chunk.len() == MAX / 2 {
                set.add_chunk(std::mem::replace(&mut chunk, Vec::with_capacity(MAX / 2)));
            }
        }
        if !chunk.is_empty() {
            set.add_chunk(chunk);
        }
        set
    }

    fn add_chunk(&mut self, chunk: Vec<Key>) {
        self.len += chunk.len() as u64;
        self.chunks.insert(chunk[0].clone(), Arc::new(chunk));
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
            self.add_chunk(vec![key.into()]);
            return;
        };
        let Err(at) = self.chunk(&first).binary_search_by(|k| (**k).cmp(key)) else {
            return;
        };
        let mut chunk = self.chunks.remove(&first).expect("home chunk");
        Arc::make_mut(&mut chunk).insert(at, key.into());
        self.len += 1;
        if chunk.len() > MAX {
            let tail = Arc::make_mut(&mut chunk).split_off(MAX / 2);
            self.chunks.insert(tail[0].clone(), Arc::new(tail));
        }
        self.chunks.insert(chunk[0].clone(), chunk);
    }

    /// Takes `key` out (nothing if absent).
    pub(crate) fn remove(&mut self, key: &[u8]) {
        let Some(first) = self.home(key) else {
            return;
        };
        let Ok(at) = self.chunk(&first).binary_search_by(|k| (**k).cmp(key)) else {
            return;
        };
        let mut chunk = self.chunks.remove(&first).expect("home chunk");
        Arc::make_mut(&mut chunk).remove(at);
        self.len -= 1;
        let Some(last) = chunk.last().cloned() else {
            return;
        };
        if chunk.len() < MIN {
            let fits = |(first, other): (&Key, &Chunk)| {
                (chunk.len() + other.len() <= MAX).then(|| first.clone())
            };
            let next = self
                .chunks
                .range::<_, [u8]>((Bound::Excluded(&*last), Bound::Unbounded))
                .next()
                .and_then(fits);
            let prev = self.chunks.get_prev(&*chunk[0]).and_then(fits);
            if let Some(next) = next {
                let next = self.chunks.remove(&next).expect("next chunk");
                Arc::make_mut(&mut chunk).extend(next.iter().cloned());
            } else if let Some(prev) = prev {
                let mut joined = self.chunks.remove(&prev).expect("previous chunk");
                Arc::make_mut(&mut joined).extend(chunk.iter().cloned());
                chunk = joined;
            }
        }
        self.chunks.insert(chunk[0].clone(), chunk);
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
        for (first, keys) in self
            .chunks
            .range::<_, [u8]>((Bound::Included(&*from), Bound::Unbounded))
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
                _ if *first != from => 0,
                Bound::Included(l) => keys.partition_point(|k| **k < *l),
                Bound::Excluded(l) => keys.partition_point(|k| **k <= *l),
                Bound::Unbounded => 0,
            };
            let last = keys.last().expect("chunks are not empty");
            let end = match hi {
                Bound::Included(h) if **last > *h => keys.partition_point(|k| **k <= *h),
                Bound::Excluded(h) if **last >= *h => keys.partition_point(|k| **k < *h),
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
        let mut prev: Option<&Key> = None;
        let mut total = 0u64;
        for (first, keys) in set.chunks.iter() {
            assert!(
                !keys.is_empty() && keys.len() <= MAX,
                "chunk of {}",
                keys.len()
            );
            assert_eq!(first, &keys[0]);
            assert!(keys.windows(2).all(|w| w[0] < w[1]));
            assert!(prev.is_none_or(|p| p < &keys[0]));
            prev = keys.last();
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
