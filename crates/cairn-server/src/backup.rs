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
//! must not hold it for ever. A stream cut short so ends with an error
//! after what it had buffered, never as if whole (etcdctl would save the
//! bytes as the file).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_api::etcdserverpb::{ResponseHeader, SnapshotResponse};
use cairn_store::Backup;
use futures::StreamExt;
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
    // Set once the last message (the digest) is handed over: a stream
    // that ends before it ends with an error, never as a whole backup
    // (etcdctl would save the bytes it got as the file).
    let whole = Arc::new(AtomicBool::new(false));
    let sent_whole = whole.clone();
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
        if send(Ok(SnapshotResponse {
            header: Some(header),
            remaining_bytes: 0,
            blob: hash.finalize().to_vec(),
            version: String::new(),
        })) {
            sent_whole.store(true, Ordering::Release);
        }
    });
    let cut_short = futures::stream::once(async move {
        (!whole.load(Ordering::Acquire)).then(|| {
            Err(Status::unavailable(format!(
                "etcdserver: snapshot: the client took nothing for {STALLED:?}"
            )))
        })
    })
    .filter_map(std::future::ready);
    Box::pin(ReceiverStream::new(rx).chain(cut_short))
}
