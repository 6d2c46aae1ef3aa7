//! The byte encoding of everything Raft stores or sends: postcard (serde).

use serde::{de::DeserializeOwned, Serialize};

use crate::{Error, Result};

/// Encodes a value.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes a value.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(|e| Error::Codec(e.to_string()))
}
