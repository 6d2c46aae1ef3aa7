//! [`Overlay`]: pending writes layered over a read view, readable as one
//! [`Snapshot`] — so a sequence of operations can each see the writes of the
//! ones before and still commit as a single atomic [`WriteBatch`] (how the
//! state machine applies a group-committed Raft entry of many transactions).

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use crate::engine::{KeyIter, KvIter, KvPair, Op, Snapshot, WriteBatch};
use crate::{Error, Result};

/// Pending writes over `base`.
pub struct Overlay<'a> {
    base: &'a dyn Snapshot,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    batch: WriteBatch,
}

impl<'a> Overlay<'a> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a dyn Snapshot) -> Self {
        Self {
            base,
            pending: BTreeMap::new(),
            batch: WriteBatch::new(),
        }
    }

    /// Adds `batch`'s puts and deletes (range deletes are not supported).
    pub fn write(&mut self, batch: WriteBatch) -> Result<()> {
        for op in &batch.ops {
            match op {
                Op::Put(k, v) => {
                    self.pending.insert(k.clone(), Some(v.clone()));
                }
                Op::Delete(k) => {
                    self.pending.insert(k.clone(), None);
                }
                Op::DeleteRange(..) => {
                    return Err(Error::Engine("range delete in an overlay".into()))
                }
            }
        }
        self.batch.extend(batch);
        Ok(())
    }

    /// Every pending write, in order, as one batch.
    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

impl Snapshot for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        if holds_nothing(&start, &end) {
            return Box::new(std::iter::empty());
        }
        let base = self.base.scan(start.clone(), end.clone(), reverse);
        let pend: PendingIter<'_> = if reverse {
            Box::new(
                self.pending
                    .range((start, end))
                    .rev()
                    .map(|(k, v)| (k.clone(), v.clone())),
            )
        } else {
            Box::new(
                self.pending
                    .range((start, end))
                    .map(|(k, v)| (k.clone(), v.clone())),
            )
        };
        Box::new(Merge {
            base: base.peekable(),
            pending: pend.peekable(),
            reverse,
        })
    }

    fn scan_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KeyIter<'_> {
        if holds_nothing(&start, &end) {
            return Box::new(std::iter::empty());
        }
        // The merge of `scan`, with every value left empty.
        let base: KvIter<'_> = Box::new(
            self.base
                .scan_keys(start.clone(), end.clone())
                .map(|item| item.map(|k| (k, Vec::new()))),
        );
        let pend: PendingIter<'_> = Box::new(
            self.pending
                .range((start, end))
                .map(|(k, v)| (k.clone(), v.as_ref().map(|_| Vec::new()))),
        );
        let merged = Merge {
            base: base.peekable(),
            pending: pend.peekable(),
            reverse: false,
        };
        Box::new(merged.map(|item| item.map(|(k, _)| k)))
    }

    /// The base's count (in memory, if it keeps one), corrected by each
    /// pending write in the range: one base lookup per pending key there,
    /// not a walk of the range.
    fn count_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Result<u64> {
        if holds_nothing(&start, &end) {
            return Ok(0);
        }
        let mut n = i128::from(self.base.count_keys(start.clone(), end.clone())?);
        for (key, value) in self.pending.range((start, end)) {
            let was = self.base.value_len(key)?.is_some();
            n += i128::from(value.is_some()) - i128::from(was);
        }
        u64::try_from(n).map_err(|_| Error::Engine(format!("a count of {n} keys")))
    }

    fn value_len(&self, key: &[u8]) -> Result<Option<usize>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.as_ref().map(Vec::len)),
            None => self.base.value_len(key),
        }
    }
}

/// True when no key lies between `start` and `end` (and a `BTreeMap`
/// range over them would panic: start above end, or one key excluded).
fn holds_nothing(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => {
            s >= e
        }
        _ => false,
    }
}

/// Pending writes in scan order (`None` = deleted).
type PendingIter<'a> = Box<dyn Iterator<Item = (Vec<u8>, Option<Vec<u8>>)> + Send + 'a>;

struct Merge<'a> {
    base: Peekable<KvIter<'a>>,
    pending: Peekable<PendingIter<'a>>,
    reverse: bool,
}

impl Iterator for Merge<'_> {
    type Item = Result<KvPair>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_pending = match (self.base.peek(), self.pending.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(Ok((bk, _))), Some((pk, _))) => {
                    if bk == pk {
                        self.base.next(); // shadowed by the pending write
                        true
                    } else {
                        (pk < bk) != self.reverse
                    }
                }
            };
            if !take_pending {
                return self.base.next();
            }
            let (k, v) = self.pending.next()?;
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
            // A pending delete hides the key: keep going.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Engine, MemoryEngine};

    fn keys(it: KvIter<'_>) -> Vec<(u8, Vec<u8>)> {
        it.map(|r| r.unwrap()).map(|(k, v)| (k[1], v)).collect()
    }

    #[test]
    fn overlay_reads_merge_pending_writes_over_the_base() {
        let e = MemoryEngine::new();
        let mut b = WriteBatch::new();
        for i in [1u8, 3, 5, 7] {
            b.put(vec![0x10, i], vec![i]);
        }
        e.write(b, Durability::Sync).unwrap();
        let mut o = Overlay::new(&e);
        let mut w = WriteBatch::new();
        w.put(vec![0x10, 2], vec![20]);
        w.put(vec![0x10, 3], vec![30]);
        w.delete(vec![0x10, 5]);
        w.put(vec![0x10, 9], vec![90]);
        o.write(w).unwrap();
        let all = (Bound::Included(vec![0x10]), Bound::Excluded(vec![0x11]));
        let fwd = keys(o.scan(all.0.clone(), all.1.clone(), false));
        assert_eq!(
            fwd,
            vec![
                (1, vec![1]),
                (2, vec![20]),
                (3, vec![30]),
                (7, vec![7]),
                (9, vec![90])
            ]
        );
        let rev = keys(o.scan(all.0, all.1, true));
        assert_eq!(
            rev,
            vec![
                (9, vec![90]),
                (7, vec![7]),
                (3, vec![30]),
                (2, vec![20]),
                (1, vec![1])
            ]
        );
        let key_list: Vec<u8> = o
            .scan_keys(Bound::Included(vec![0x10]), Bound::Excluded(vec![0x11]))
            .map(|k| k.unwrap()[1])
            .collect();
        assert_eq!(key_list, vec![1, 2, 3, 7, 9]);
        assert_eq!(o.value_len(&[0x10, 5]).unwrap(), None);
        assert_eq!(o.value_len(&[0x10, 9]).unwrap(), Some(1));
        assert_eq!(o.value_len(&[0x10, 7]).unwrap(), Some(1));
        assert_eq!(o.get(&[0x10, 5]).unwrap(), None);
        assert_eq!(o.get(&[0x10, 7]).unwrap(), Some(vec![7]));
        let k = |i: u8| vec![0x10, i];
        let spans = [
            (Bound::Included(vec![0x10]), Bound::Excluded(vec![0x11])),
            (Bound::Included(k(2)), Bound::Excluded(k(7))),
            (Bound::Excluded(k(3)), Bound::Included(k(9))),
            (Bound::Excluded(k(5)), Bound::Excluded(k(5))),
            (Bound::Included(k(5)), Bound::Included(k(5))),
            (Bound::Included(k(8)), Bound::Excluded(k(2))),
        ];
        let counts: Vec<u64> = spans
            .iter()
            .map(|(lo, hi)| {
                let n = o.count_keys(lo.clone(), hi.clone()).unwrap();
                assert_eq!(n, o.scan_keys(lo.clone(), hi.clone()).count() as u64);
                n
            })
            .collect();
        assert_eq!(counts, vec![5, 2, 2, 0, 0, 0]);
        assert_eq!(o.into_batch().len(), 4);
        assert_eq!(
            e.get(&[0x10, 2]).unwrap(),
            None,
            "base untouched until committed"
        );
    }
}
