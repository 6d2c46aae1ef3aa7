//! The engine conformance suite: every [`Engine`] must pass [`run_all`].
//!
//! Each check takes a fresh, empty engine from the factory and panics (this is
//! test code) with a message naming the broken property.

use std::ops::Bound;

use crate::{Durability, Engine, WriteBatch};

fn k(space: u8, s: &str) -> Vec<u8> {
    let mut v = vec![space];
    v.extend_from_slice(s.as_bytes());
    v
}

fn collect(it: crate::KvIter<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.map(|r| r.expect("scan item")).collect()
}

fn write(e: &dyn Engine, ops: &[(&str, Option<&str>)]) {
    let mut b = WriteBatch::new();
    for (key, val) in ops {
        match val {
            Some(v) => b.put(k(0x10, key), v.as_bytes().to_vec()),
            None => b.delete(k(0x10, key)),
        }
    }
    e.write(b, Durability::Sync).expect("write");
}

/// Put, overwrite, delete and get of single keys.
pub fn point_ops(e: &dyn Engine) {
    assert_eq!(
        e.get(&k(0x10, "a")).unwrap(),
        None,
        "empty engine has no keys"
    );
    write(e, &[("a", Some("1")), ("b", Some("2"))]);
    assert_eq!(e.get(&k(0x10, "a")).unwrap(), Some(b"1".to_vec()));
    write(e, &[("a", Some("3"))]);
    assert_eq!(
        e.get(&k(0x10, "a")).unwrap(),
        Some(b"3".to_vec()),
        "overwrite"
    );
    write(e, &[("a", None), ("zz", None)]);
    assert_eq!(e.get(&k(0x10, "a")).unwrap(), None, "delete");
    assert_eq!(e.get(&k(0x10, "b")).unwrap(), Some(b"2".to_vec()));
    assert_eq!(e.get(&[]).unwrap(), None, "empty key reads as absent");
}

/// Forward and reverse scans honour bounds and order.
pub fn scans(e: &dyn Engine) {
    write(
        e,
        &[
            ("a", Some("1")),
            ("b", Some("2")),
            ("c", Some("3")),
            ("d", Some("4")),
        ],
    );
    let fwd = collect(e.scan(
        Bound::Included(k(0x10, "b")),
        Bound::Excluded(k(0x10, "d")),
        false,
    ));
    assert_eq!(
        fwd,
        vec![(k(0x10, "b"), b"2".to_vec()), (k(0x10, "c"), b"3".to_vec())]
    );
    let rev = collect(e.scan(
        Bound::Excluded(k(0x10, "a")),
        Bound::Included(k(0x10, "d")),
        true,
    ));
    let keys: Vec<_> = rev.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        vec![k(0x10, "d"), k(0x10, "c"), k(0x10, "b")],
        "reverse scan"
    );
    let all = collect(e.scan(Bound::Included(vec![0x10]), Bound::Unbounded, false));
    assert_eq!(all.len(), 4, "unbounded end stays within the space");
    let inverted = collect(e.scan(
        Bound::Included(k(0x10, "d")),
        Bound::Excluded(k(0x10, "a")),
        false,
    ));
    assert!(inverted.is_empty(), "inverted range is empty");
}

/// Keyspaces (first byte) are isolated from each other.
pub fn spaces_are_isolated(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(k(0x01, "x"), b"log".to_vec());
    b.put(k(0x11, "x"), b"latest".to_vec());
    b.put(k(0x10, "x"), b"version".to_vec());
    e.write(b, Durability::Sync).unwrap();
    let v = collect(e.scan(
        Bound::Included(vec![0x10]),
        Bound::Excluded(vec![0x11]),
        false,
    ));
    assert_eq!(v, vec![(k(0x10, "x"), b"version".to_vec())]);
    let l = collect(e.scan(Bound::Included(vec![0x11]), Bound::Unbounded, false));
    assert_eq!(l, vec![(k(0x11, "x"), b"latest".to_vec())]);
}

/// A batch applies all its ops, in order, across spaces; range deletes work.
pub fn batches(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    for i in 0..10u8 {
        b.put(vec![0x01, i], vec![i]);
    }
    b.put(k(0x10, "k"), b"v1".to_vec());
    b.put(k(0x10, "k"), b"v2".to_vec());
    e.write(b, Durability::Buffered).unwrap();
    assert_eq!(
        e.get(&k(0x10, "k")).unwrap(),
        Some(b"v2".to_vec()),
        "later op wins"
    );
    let mut d = WriteBatch::new();
    d.delete_range(vec![0x01, 2], vec![0x01, 8]);
    e.write(d, Durability::Sync).unwrap();
    let left: Vec<_> = collect(e.scan(
        Bound::Included(vec![0x01]),
        Bound::Excluded(vec![0x02]),
        false,
    ))
    .into_iter()
    .map(|(k, _)| k[1])
    .collect();
    assert_eq!(left, vec![0, 1, 8, 9], "range delete removes [start, end)");
    e.sync().unwrap();
}

/// A snapshot does not see later writes.
pub fn snapshots_are_stable(e: &dyn Engine) {
    write(e, &[("a", Some("old")), ("b", Some("old"))]);
    let snap = e.snapshot();
    write(e, &[("a", Some("new")), ("b", None), ("c", Some("new"))]);
    assert_eq!(snap.get(&k(0x10, "a")).unwrap(), Some(b"old".to_vec()));
    assert_eq!(snap.get(&k(0x10, "b")).unwrap(), Some(b"old".to_vec()));
    let all = collect(snap.scan(Bound::Included(vec![0x10]), Bound::Unbounded, false));
    assert_eq!(all.len(), 2, "snapshot scan sees its own point in time");
    let rev = collect(snap.scan(Bound::Included(vec![0x10]), Bound::Unbounded, true));
    assert_eq!(rev[0].0, k(0x10, "b"));
    assert_eq!(e.get(&k(0x10, "a")).unwrap(), Some(b"new".to_vec()));
}

/// Binary keys and values, including zero bytes and empty values.
pub fn binary_data(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(vec![0x10, 0, 0, 0xFF], vec![]);
    b.put(vec![0x10, 0], vec![0, 1, 2]);
    e.write(b, Durability::Sync).unwrap();
    assert_eq!(
        e.get(&[0x10, 0, 0, 0xFF]).unwrap(),
        Some(vec![]),
        "empty value is not absence"
    );
    let all = collect(e.scan(Bound::Included(vec![0x10]), Bound::Unbounded, false));
    assert_eq!(all[0].0, vec![0x10, 0]);
}

/// A key of just its space byte is an ordinary key that sorts first in its
/// space, and a reverse scan bounded below finds the greatest key under an
/// excluded end (a seek: what MVCC uses for "the version before"). The
/// by-revision index relies on both.
pub fn space_byte_keys_and_reverse_seeks(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(vec![0x13], Vec::new());
    for key in ["a1", "a3", "b1"] {
        b.put(k(0x13, key), key.as_bytes().to_vec());
    }
    e.write(b, Durability::Sync).unwrap();
    assert_eq!(e.get(&[0x13]).unwrap(), Some(vec![]), "one-byte key");
    let all = collect(e.scan(Bound::Included(vec![0x13]), Bound::Unbounded, false));
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].0, vec![0x13], "the space byte alone sorts first");
    let below = |end: &str| {
        e.scan(
            Bound::Included(k(0x13, "a")),
            Bound::Excluded(k(0x13, end)),
            true,
        )
        .next()
        .map(|r| r.expect("scan item").0)
    };
    assert_eq!(below("a3"), Some(k(0x13, "a1")), "greatest key below a3");
    assert_eq!(below("a2"), Some(k(0x13, "a1")), "greatest key below a2");
    assert_eq!(below("a1"), None, "nothing below the lower bound");
    let mut d = WriteBatch::new();
    d.delete_range(vec![0x13], vec![0x14]);
    e.write(d, Durability::Sync).unwrap();
    assert!(
        collect(e.scan(Bound::Included(vec![0x13]), Bound::Unbounded, false)).is_empty(),
        "a range delete of the whole space takes the one-byte key too"
    );
}

/// Key-only reads agree with full reads, for small values and for values
/// large enough that an engine keeps them apart from the keys (0x10 and
/// 0x11 are the spaces fjall separates), in the live engine and a snapshot.
pub fn key_only_reads(e: &dyn Engine) {
    for space in [0x10, 0x11, 0x12] {
        let mut b = WriteBatch::new();
        b.put(k(space, "a"), vec![1]);
        b.put(k(space, "b"), vec![7; 5000]);
        b.put(k(space, "c"), Vec::new());
        b.put(k(space, "d"), vec![9; 1500]);
        e.write(b, Durability::Sync).unwrap();
        let snap = e.snapshot();
        let mut d = WriteBatch::new();
        d.delete(k(space, "b"));
        d.put(k(space, "e"), vec![2; 3000]);
        e.write(d, Durability::Sync).unwrap();
        let span = || (Bound::Included(vec![space]), space_end_of(space));
        let names = |view: &dyn crate::Snapshot| -> Vec<Vec<u8>> {
            let (lo, hi) = span();
            view.scan_keys(lo, hi).map(|r| r.unwrap()).collect()
        };
        assert_eq!(
            names(&*snap),
            vec![k(space, "a"), k(space, "b"), k(space, "c"), k(space, "d")]
        );
        assert_eq!(
            names(e),
            vec![k(space, "a"), k(space, "c"), k(space, "d"), k(space, "e")]
        );
        let from_c: Vec<_> = e
            .scan_keys(
                Bound::Excluded(k(space, "a")),
                Bound::Excluded(k(space, "e")),
            )
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            from_c,
            vec![k(space, "c"), k(space, "d")],
            "bounds are honoured"
        );
        assert!(e
            .scan_keys(
                Bound::Included(k(space, "z")),
                Bound::Excluded(k(space, "a"))
            )
            .next()
            .is_none());
        assert_eq!(snap.value_len(&k(space, "b")).unwrap(), Some(5000));
        assert_eq!(e.value_len(&k(space, "b")).unwrap(), None);
        assert_eq!(e.value_len(&k(space, "c")).unwrap(), Some(0));
        assert_eq!(e.value_len(&k(space, "a")).unwrap(), Some(1));
        assert_eq!(e.value_len(&k(space, "e")).unwrap(), Some(3000));
        assert_eq!(e.get(&k(space, "e")).unwrap(), Some(vec![2; 3000]));
        assert_eq!(snap.get(&k(space, "b")).unwrap(), Some(vec![7; 5000]));
    }
}

/// Defragmenting keeps every live key and value.
pub fn defragment_keeps_data(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    for i in 0..300u32 {
        b.put(
            k(0x10, &format!("d{i:04}")),
            vec![(i % 251) as u8; 100 + (i as usize % 3) * 1000],
        );
    }
    e.write(b, Durability::Sync).unwrap();
    let mut d = WriteBatch::new();
    for i in (0..300u32).step_by(2) {
        d.delete(k(0x10, &format!("d{i:04}")));
    }
    e.write(d, Durability::Sync).unwrap();
    let before = collect(e.scan(Bound::Included(vec![0x10]), space_end_of(0x10), false));
    e.defragment().unwrap();
    let after = collect(e.scan(Bound::Included(vec![0x10]), space_end_of(0x10), false));
    assert_eq!(before.len(), 150);
    assert_eq!(before, after, "defragment changed the data");
}

/// A key range's two bounds.
type Span = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Counts agree with scans, in the live engine and in snapshots taken
/// between batches of puts, deletes and range deletes (0x11 is the space
/// fjall keeps counted in memory), for every kind of bound; a snapshot's
/// counts stay those of its moment.
pub fn counts(e: &dyn Engine) {
    for space in [0x10, 0x11] {
        let key = |i: u64| k(space, &format!("c{i:04}"));
        let scanned = |view: &dyn crate::Snapshot, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>| {
            view.scan_keys(lo, hi)
                .collect::<crate::Result<Vec<_>>>()
                .unwrap()
                .len() as u64
        };
        let bounds = |i: u64| -> [Span; 5] {
            let (a, b) = (i * 37 % 1000, i * 91 % 1000);
            [
                (Bound::Included(vec![space]), space_end_of(space)),
                (Bound::Included(key(a)), Bound::Excluded(key(b))),
                (Bound::Excluded(key(a)), Bound::Included(key(b))),
                (Bound::Included(key(a)), space_end_of(space)),
                (Bound::Included(key(a)), Bound::Included(key(a))),
            ]
        };
        // A fixed pseudo-random walk: puts, deletes, a range delete.
        let mut x = 7u64;
        let mut kept: Vec<(std::sync::Arc<dyn crate::Snapshot>, Vec<u64>)> = Vec::new();
        for round in 0..40u64 {
            let mut b = WriteBatch::new();
            for _ in 0..60 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (x >> 33) % 1000;
                if (x >> 20).is_multiple_of(3) {
                    b.delete(key(i));
                } else {
                    b.put(key(i), vec![1; (i % 3) as usize * 700]);
                }
            }
            if round % 10 == 9 {
                b.delete_range(key(round * 20), key(round * 20 + 150));
            }
            e.write(b, Durability::Buffered).unwrap();
            let snap = e.snapshot();
            let mut counts = Vec::new();
            for (lo, hi) in bounds(round) {
                let n = snap.count_keys(lo.clone(), hi.clone()).unwrap();
                assert_eq!(n, scanned(&*snap, lo.clone(), hi.clone()), "round {round}");
                assert_eq!(e.count_keys(lo.clone(), hi.clone()).unwrap(), n);
                counts.push(n);
            }
            if round % 8 == 0 {
                kept.push((snap, counts));
            }
        }
        assert!(kept.iter().any(|(_, c)| c[0] > 100), "the walk kept keys");
        for (round, (snap, counts)) in kept.iter().enumerate() {
            let again: Vec<u64> = bounds(round as u64 * 8)
                .into_iter()
                .map(|(lo, hi)| snap.count_keys(lo, hi).unwrap())
                .collect();
            assert_eq!(&again, counts, "a snapshot's counts changed");
        }
    }
}

fn space_end_of(space: u8) -> Bound<Vec<u8>> {
    Bound::Excluded(vec![space + 1])
}

/// Runs every check, each on a fresh engine from `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Engine>) {
    point_ops(&*make());
    scans(&*make());
    spaces_are_isolated(&*make());
    batches(&*make());
    snapshots_are_stable(&*make());
    binary_data(&*make());
    space_byte_keys_and_reverse_seeks(&*make());
    key_only_reads(&*make());
    counts(&*make());
    defragment_keeps_data(&*make());
}
