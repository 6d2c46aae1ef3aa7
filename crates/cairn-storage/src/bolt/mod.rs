//! bbolt's file format — etcd's backend database, and so the format of an
//! etcd snapshot — read and written without bbolt.
//!
//! Cairn speaks it for one job: snapshots. `etcdctl snapshot save` against
//! Cairn writes a bbolt file in etcd's schema (see `cairn_mvcc::snapshot`),
//! so `etcdctl snapshot status` and etcd's own restore accept it, and
//! `cairn snapshot restore` reads the files etcd writes. Only what those
//! need is here: a [`Writer`] that lays out sorted buckets once, and a
//! [`Reader`] that walks buckets in key order. Neither updates a file in
//! place, so there is no freelist to keep and no transaction to log.
//!
//! The format (bbolt 1.3, which etcd 3.4–3.6 use), all integers
//! little-endian (the byte order of the machines etcd runs on):
//!
//! - The file is pages of `page_size` bytes (the OS page size when the
//!   file was made, 4096 here). A page starts with a 16-byte header: its id
//!   (`u64`), flags (`u16`: branch 0x01, leaf 0x02, meta 0x04, freelist
//!   0x10), element count (`u16`) and overflow (`u32`: how many more pages
//!   it spans, for elements larger than a page).
//! - Pages 0 and 1 are meta pages: magic `0xED0CDAED`, version 2, page
//!   size, flags, the root bucket (root page id, sequence), the freelist's
//!   page id, the page count (`pgid`, the high-water mark), the transaction
//!   id and an FNV-1a 64 checksum of the fields before it. A reader takes
//!   the valid one with the larger transaction id.
//! - A bucket is a B+tree. A leaf page holds 16-byte elements (flags,
//!   position, key size, value size) followed by the keys and values; an
//!   element's position counts from the element itself. A branch page holds
//!   16-byte elements (position, key size, child page id), each key the
//!   first key under that child. Keys within a bucket are unique and
//!   ascending in byte order.
//! - The root bucket's leaf elements with flag 0x01 are the named buckets;
//!   their value is a 16-byte bucket header (root page id, sequence). A
//!   root page id of 0 marks an *inline* bucket: its single leaf page
//!   follows the header inside the value.
//!
//! The writer never writes inline buckets (every bucket gets pages; readers
//! accept both) and fills pages fully, where bbolt splits them half full:
//! both are valid layouts, and a snapshot is read once, not updated.

mod read;
#[cfg(test)]
mod tests;
mod write;

pub use read::{Entry, ReadAt, Reader};
pub use write::Writer;

/// The page size the writer uses (the OS page size on etcd's platforms).
pub const PAGE_SIZE: usize = 4096;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
/// A leaf element that names a bucket.
const BUCKET_ELEMENT: u32 = 0x01;
/// Bytes of a bucket header (root page id, sequence).
const BUCKET_HEADER: usize = 16;
/// Bytes of the meta fields the checksum covers.
const META_CHECKED: usize = 56;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
