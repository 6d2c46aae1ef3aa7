//! The `Maintenance.Snapshot` stream, as etcd sends it: the database file
//! in chunks, each with the bytes still to come, then one last message of
//! `remaining_bytes = 0` whose blob is the SHA-256 of everything before.
//! `etcdctl snapshot save` writes the blobs to a file in order, so the
//! saved file is the database with its digest appended, which restores
//! check (`cairn snapshot restore`, `etcdutl snapshot restore`).
//!
//! A blocking task reads the backup file (see `cairn_store::backup`) and
//! feeds a small channel: memory stays at a few chunks whatever the
//! database's size, and a client that goes away stops the reading — as
//! does one that takes nothing for [`STALLED`]: a backup holds one of the
//! few turns a member gives backups (`cairn_store::backup::AT_ONCE`) until
//! it ends, so a client that keeps its connection open without reading
//! must not hold it for ever.

use std::io::Read;

use cairn_api::etcdserverpb::{ResponseHeader, SnapshotResponse};
use cairn_store::Backup;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::Status;

/// Bytes per message (etcd's `snapshotSendBufferSize`).
const CHUNK: usize = 32 * 1024;

/// How long a backup waits for its client to take the next chunk.
const STALLED: std::time::Duration = std::time::Duration::from_secs(120);

/// Streams `backup` with etcd's framing; `header` goes on every message.
pub fn stream(backup: Backup, header: ResponseHeader) -> BoxStream<SnapshotResponse> {
    let (tx, rx) = mpsc::channel(4);
    let runtime = tokio::runtime::Handle::current();
    // Sent unless the client went away or took nothing for [`STALLED`].
    let send = move |msg| runtime.block_on(tx.send_timeout(msg, STALLED)).is_ok();
    tokio::task::spawn_blocking(move || {
        // (Held whole until the last byte is sent or the client is gone:
        // it counts against the backups a member streams at once.)
        let mut backup = backup;
        let size = backup.size;
        let mut hash = Sha256::new();
        let mut sent = 0u64;
        let mut buf = vec![0u8; CHUNK];
        while sent < size {
            let want = (size - sent).min(CHUNK as u64) as usize;
            if let Err(e) = backup.file.read_exact(&mut buf[..want]) {
                send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))));
                return;
            }
            sent += want as u64;
            hash.update(&buf[..want]);
            let msg = SnapshotResponse {
                header: Some(header),
                remaining_bytes: size - sent,
                blob: buf[..want].to_vec(),
                version: String::new(),
            };
            if !send(Ok(msg)) {
                return; // the client went away, or stalled
            }
        }
        send(Ok(SnapshotResponse {
            header: Some(header),
            remaining_bytes: 0,
            blob: hash.finalize().to_vec(),
            version: String::new(),
        }));
    });
    Box::pin(ReceiverStream::new(rx))
}
