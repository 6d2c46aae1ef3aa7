//! Keys and values the writing workloads send: fixed-size keys drawn from
//! `--key-space-size` (sequentially or at random) starting at `--key-start`,
//! like etcd's benchmark, so both systems see byte-identical requests.
//! Values are `v` repeated, which any compressing engine shrinks to almost
//! nothing; `--val-random-bytes N` makes the first N bytes of each value
//! random, so a load's disk figure means something.

use crate::args::KeyShape;

/// Produces the `i`-th request's key and the shared value.
pub struct KeyGen {
    size: usize,
    start: u64,
    space: u64,
    sequential: bool,
    rng: fastrand::Rng,
    /// The value puts send (its first `random` bytes drawn anew for each).
    value: Vec<u8>,
    random: usize,
}

impl KeyGen {
    /// A generator for `shape`, seeded per client so runs are repeatable.
    pub fn new(shape: &KeyShape, seed: u64) -> Self {
        Self {
            size: shape.key_size.max(1),
            start: shape.key_start,
            space: shape.key_space_size.max(1),
            sequential: shape.sequential_keys,
            rng: fastrand::Rng::with_seed(seed),
            value: vec![b'v'; shape.val_size],
            random: shape.val_random_bytes.min(shape.val_size),
        }
    }

    /// The next put's value.
    pub fn value(&mut self) -> Vec<u8> {
        let mut v = self.value.clone();
        self.rng.fill(&mut v[..self.random]);
        v
    }

    /// The key of request number `i` (global across clients).
    pub fn key(&mut self, i: u64) -> Vec<u8> {
        let n = if self.sequential {
            i % self.space
        } else {
            self.rng.u64(0..self.space)
        };
        key_bytes(self.start.saturating_add(n), self.size)
    }
}

/// Key number `n` as exactly `size` bytes: the decimal number, zero-padded
/// (or its last `size` digits when `size` is smaller).
pub fn key_bytes(n: u64, size: usize) -> Vec<u8> {
    let s = format!("{n:0size$}");
    s.as_bytes()[s.len() - size..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_space() {
        assert_eq!(key_bytes(42, 8), b"00000042");
        assert_eq!(key_bytes(123456, 3), b"456");
        let shape = KeyShape {
            key_size: 6,
            val_size: 4,
            key_space_size: 3,
            sequential_keys: true,
            key_start: 0,
            val_random_bytes: 0,
        };
        let mut g = KeyGen::new(&shape, 1);
        let ks: Vec<_> = (0..4).map(|i| g.key(i)).collect();
        assert_eq!(ks[0], b"000000");
        assert_eq!(ks[3], b"000000");
        assert_eq!(g.value(), b"vvvv");
        let mut r = KeyGen::new(
            &KeyShape {
                sequential_keys: false,
                ..shape
            },
            7,
        );
        assert!((0..100).all(|i| r.key(i).len() == 6));
        let mut offset = KeyGen::new(
            &KeyShape {
                key_start: 10,
                val_random_bytes: 2,
                ..shape
            },
            1,
        );
        assert_eq!(offset.key(4), b"000011");
        let (a, b) = (offset.value(), offset.value());
        assert_eq!((&a[2..], &b[2..]), (&b"vv"[..], &b"vv"[..]));
        assert_ne!(a, b, "the random prefix is drawn per value");
    }
}
