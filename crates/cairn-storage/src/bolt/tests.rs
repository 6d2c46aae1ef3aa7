use std::io::Cursor;

use super::*;
use crate::Error;

fn read_all(r: &Reader<[u8]>, bucket: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let found = r
        .for_each(bucket, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
    found.then_some(out)
}

fn open(bytes: Vec<u8>) -> Reader<[u8]> {
    Reader::open(bytes.into_boxed_slice()).unwrap()
}

#[test]
fn buckets_round_trip_through_many_pages_and_overflow() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut big: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
        .map(|i| {
            let len = if i % 997 == 0 {
                3 * PAGE_SIZE + 5
            } else {
                rng.usize(0..200)
            };
            (
                i.to_be_bytes().to_vec(),
                (0..len).map(|_| rng.u8(..)).collect(),
            )
        })
        .collect();
    big.sort();
    let small = vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())];
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    w.bucket(b"key", big.clone().into_iter().map(Ok)).unwrap();
    w.bucket(b"empty", std::iter::empty()).unwrap();
    w.bucket(b"meta", small.clone().into_iter().map(Ok))
        .unwrap();
    w.inline_bucket(b"inline", small.clone());
    let bytes = w.finish().unwrap().into_inner();
    assert_eq!(bytes.len() % PAGE_SIZE, 0);
    let r = open(bytes);
    assert_eq!(
        r.buckets().unwrap(),
        vec![
            b"empty".to_vec(),
            b"inline".to_vec(),
            b"key".to_vec(),
            b"meta".to_vec()
        ]
    );
    assert_eq!(read_all(&r, b"key").unwrap(), big);
    assert_eq!(read_all(&r, b"meta").unwrap(), small);
    assert_eq!(read_all(&r, b"inline").unwrap(), small);
    assert_eq!(read_all(&r, b"empty").unwrap(), Vec::new());
    assert_eq!(read_all(&r, b"nope"), None);
}

#[test]
fn a_file_with_bytes_after_its_pages_still_reads() {
    // etcd's snapshot stream appends a SHA-256 to the database.
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    w.bucket(b"k", [Ok((b"x".to_vec(), b"y".to_vec()))])
        .unwrap();
    let mut bytes = w.finish().unwrap().into_inner();
    bytes.extend_from_slice(&[9u8; 32]);
    let r = open(bytes);
    assert_eq!(
        read_all(&r, b"k").unwrap(),
        vec![(b"x".to_vec(), b"y".to_vec())]
    );
}

#[test]
fn unsorted_or_repeated_keys_are_refused() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let e = w
        .bucket(
            b"k",
            [
                Ok((b"b".to_vec(), Vec::new())),
                Ok((b"a".to_vec(), Vec::new())),
            ],
        )
        .unwrap_err();
    assert!(matches!(e, Error::Bolt(_)), "{e}");
    let e = w
        .bucket(
            b"j",
            [
                Ok((b"a".to_vec(), Vec::new())),
                Ok((b"a".to_vec(), Vec::new())),
            ],
        )
        .unwrap_err();
    assert!(matches!(e, Error::Bolt(_)), "{e}");
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let entries: Vec<_> = (0..5000u32)
        .map(|i| Ok((i.to_be_bytes().to_vec(), vec![1u8; 40])))
        .collect();
    w.bucket(b"k", entries).unwrap();
    let good = w.finish().unwrap().into_inner();
    assert!(Reader::open(vec![0u8; 100].into_boxed_slice()).is_err());
    // Shorter than the pages its meta claims: refused at open.
    assert!(Reader::open(good[..good.len() - 1].to_vec().into_boxed_slice()).is_err());
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..300 {
        let mut bad = good.clone();
        // Truncate, or flip bytes past the meta pages.
        if rng.bool() {
            bad.truncate(rng.usize(2 * PAGE_SIZE..good.len()));
        } else {
            for _ in 0..rng.usize(1..20) {
                let at = rng.usize(2 * PAGE_SIZE..good.len());
                bad[at] = rng.u8(..);
            }
        }
        let Ok(r) = Reader::open(bad.into_boxed_slice()) else {
            continue;
        };
        let _ = r.for_each(b"k", &mut |_, _| Ok(()));
    }
}

/// The page ids whose header has `flags`.
fn pages_of(file: &[u8], flags: u16) -> Vec<usize> {
    (3..file.len() / PAGE_SIZE)
        .filter(|&i| u16_at(&file[i * PAGE_SIZE..], 8) == flags)
        .collect()
}

#[test]
fn a_cycle_or_a_huge_overflow_is_an_error_not_a_hang_or_an_allocation() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let entries: Vec<_> = (0..5000u32)
        .map(|i| Ok((i.to_be_bytes().to_vec(), vec![1u8; 40])))
        .collect();
    w.bucket(b"k", entries).unwrap();
    let good = w.finish().unwrap().into_inner();
    // A branch page whose first child is itself.
    let branch = pages_of(&good, BRANCH)[0];
    let mut cyclic = good.clone();
    let at = branch * PAGE_SIZE + PAGE_HEADER + 8;
    cyclic[at..at + 8].copy_from_slice(&(branch as u64).to_le_bytes());
    let r = open(cyclic);
    let e = r.for_each(b"k", &mut |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    // A leaf claiming 2^32 overflow pages.
    let leaf = pages_of(&good, LEAF)[0];
    let mut huge = good.clone();
    let at = leaf * PAGE_SIZE + 12;
    huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let r = open(huge);
    let e = r.for_each(b"k", &mut |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
}
