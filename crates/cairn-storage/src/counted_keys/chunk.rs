//! [`Chunk`]: a short run of ascending, distinct byte keys packed into one
//! buffer — the unit [`super::CountedKeys`] copies when a write touches
//! keys a snapshot shares. Packed, a copy is two `memcpy`s (no allocation
//! or reference count per key), and a key costs its bytes and a 4-byte end
//! offset.

/// Ascending, distinct keys: key `i` is `bytes[ends[i - 1]..ends[i]]`
/// (from 0 for the first).
#[derive(Clone, Debug, Default)]
pub(super) struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Chunk {
    /// How many keys it holds.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of its keys.
    pub(super) fn bytes(&self) -> usize {
        self.bytes.len()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }

    /// Key `i`.
    pub(super) fn key(&self, i: usize) -> &[u8] {
        &self.bytes[self.start(i)..self.ends[i] as usize]
    }

    /// The first key (the chunk must not be empty).
    pub(super) fn first(&self) -> &[u8] {
        self.key(0)
    }

    /// The last key (the chunk must not be empty).
    pub(super) fn last(&self) -> &[u8] {
        self.key(self.len() - 1)
    }

    /// How many keys come before the first for which `pred` is false
    /// (`pred` true for a prefix of the keys, as in `slice::partition_point`).
    pub(super) fn partition_point(&self, pred: impl Fn(&[u8]) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.key(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// `Ok(i)` if key `i` is `key`, else `Err(i)`: where it would go.
    pub(super) fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let at = self.partition_point(|k| k < key);
        if at < self.len() && self.key(at) == key {
            Ok(at)
        } else {
            Err(at)
        }
    }

    /// Puts `key` at position `at` (where [`Chunk::search`] said).
    pub(super) fn insert(&mut self, at: usize, key: &[u8]) {
        let start = self.start(at);
        self.bytes.splice(start..start, key.iter().copied());
        let n = u32::try_from(key.len()).expect("a key under 4 GiB");
        for end in &mut self.ends[at..] {
            *end += n;
        }
        self.ends.insert(at, start as u32 + n);
    }

    /// Takes key `at` out.
    pub(super) fn remove(&mut self, at: usize) {
        let (start, end) = (self.start(at), self.ends[at] as usize);
        self.bytes.drain(start..end);
        self.ends.remove(at);
        let n = (end - start) as u32;
        for end in &mut self.ends[at..] {
            *end -= n;
        }
    }

    /// Adds `other`'s keys, which must all come after this chunk's.
    pub(super) fn append(&mut self, other: &Chunk) {
        let base = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }

    /// Adds `key`, which must come after every key here.
    pub(super) fn push(&mut self, key: &[u8]) {
        let at = self.len();
        self.insert(at, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &Chunk) -> Vec<Vec<u8>> {
        (0..c.len()).map(|i| c.key(i).to_vec()).collect()
    }

    #[test]
    fn keys_go_in_and_out_in_order() {
        let mut c = Chunk::default();
        for k in [&b"b"[..], b"dd", b"", b"a", b"ccc"] {
            let Err(at) = c.search(k) else {
                panic!("not there yet")
            };
            c.insert(at, k);
        }
        assert_eq!(
            keys(&c),
            vec![
                b"".to_vec(),
                b"a".to_vec(),
                b"b".to_vec(),
                b"ccc".to_vec(),
                b"dd".to_vec()
            ]
        );
        assert_eq!(c.search(b"ccc"), Ok(3));
        assert_eq!(c.search(b"c"), Err(3));
        assert_eq!(c.bytes(), 7);
        c.remove(3);
        c.remove(0);
        assert_eq!(keys(&c), vec![b"a".to_vec(), b"b".to_vec(), b"dd".to_vec()]);
        let mut tail = Chunk::default();
        tail.push(b"e");
        tail.push(b"f");
        c.append(&tail);
        assert_eq!(
            keys(&c),
            vec![
                b"a".to_vec(),
                b"b".to_vec(),
                b"dd".to_vec(),
                b"e".to_vec(),
                b"f".to_vec()
            ]
        );
        assert_eq!(c.search(b"f"), Ok(4));
        assert_eq!((c.first(), c.last()), (&b"a"[..], &b"f"[..]));
        assert_eq!(c.partition_point(|k| k <= &b"b"[..]), 2);
    }
}
