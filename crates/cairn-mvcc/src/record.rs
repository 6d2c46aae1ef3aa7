//! The stored form of one key version, and reads of single keys.

use cairn_api::mvccpb::KeyValue;
use cairn_storage::keys::{self, Key};
use cairn_storage::Snapshot;
use prost::Message;

use crate::{Error, Result};

const PUT: u8 = 0;
const TOMBSTONE: u8 = 1;

/// One stored version: a live value or a tombstone.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A put; `kv.key` is filled on read, not stored.
    Put(KeyValue),
    /// A delete at this revision.
    Tombstone,
}

impl Record {
    /// Byte encoding: a tag byte, then (for puts) the `KeyValue` without its key.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Put(kv) => {
                let stored = KeyValue {
                    key: Vec::new(),
                    ..kv.clone()
                };
                let mut out = Vec::with_capacity(1 + stored.encoded_len());
                out.push(PUT);
                stored.encode(&mut out).expect("Vec grows");
                out
            }
            Record::Tombstone => vec![TOMBSTONE],
        }
    }

    /// Decodes a stored record of user key `key`.
    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Record> {
        match bytes.split_first() {
            Some((&PUT, rest)) => {
                let mut kv = KeyValue::decode(rest).map_err(|e| Error::Corrupt(e.to_string()))?;
                kv.key = key.to_vec();
                Ok(Record::Put(kv))
            }
            Some((&TOMBSTONE, [])) => Ok(Record::Tombstone),
            _ => Err(Error::Corrupt(format!("bad record tag for key {key:?}"))),
        }
    }
}

/// True when a stored record of `len` bytes is a tombstone, so a count can
/// tell deletes from puts without reading values. A tombstone is its tag
/// alone; a put also carries its `KeyValue`, whose create and mod revisions
/// and version are never zero, so it is never shorter than 7 bytes.
pub fn is_tombstone_len(len: usize) -> bool {
    len == 1
}

/// The newest live version of `key`, from the latest index.
pub fn latest(read: &dyn Snapshot, key: &[u8]) -> Result<Option<KeyValue>> {
    match read.get(&Key::MvccLatest { key }.encode())? {
        Some(bytes) => match Record::decode(key, &bytes)? {
            Record::Put(kv) => Ok(Some(kv)),
            Record::Tombstone => Err(Error::Corrupt("tombstone in latest index".into())),
        },
        None => Ok(None),
    }
}

/// The version of `key` visible at revision `rev` (None if absent or deleted).
pub fn at_revision(read: &dyn Snapshot, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
    let (lo, _) = keys::versions_of(key);
    let hi = std::ops::Bound::Included(Key::MvccVersion { key, revision: rev }.encode());
    match read.scan(lo, hi, true).next() {
        Some(item) => {
            let (k, v) = item?;
            let (user, _) = keys::decode_version(&k)?;
            match Record::decode(&user, &v)? {
                Record::Put(kv) => Ok(Some(kv)),
                Record::Tombstone => Ok(None),
            }
        }
        None => Ok(None),
    }
}
