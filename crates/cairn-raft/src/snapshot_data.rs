//! A region snapshot's bytes as openraft handles them: written only if read.
//!
//! openraft asks a state machine for snapshots in three places: it *builds*
//! one every `--snapshot-count` entries so it can purge the log before it;
//! it *gets the current* one at startup (only its meta is used) and when a
//! follower is so far behind that the entries it needs are purged (then the
//! bytes are sent). Cairn's state machine is already durable in the engine,
//! like etcd's bbolt database, so only the last case needs the region's
//! data as a stream of bytes — and etcd, too, streams its database only
//! when it sends a snapshot.
//!
//! [`SnapshotData`] is that stream. Made from a [`Source`] (an engine
//! snapshot and the [`Applied`] record it matches, taken together under the
//! applied lock, so they agree), it costs nothing until someone seeks or
//! reads it; then a blocking task writes the snapshot file
//! ([`crate::snapshot_file`]) from the engine snapshot and every read and
//! seek goes to that file. The writing happens on the sender's time, not on
//! the state machine's worker, so applying never waits for it. Dropped
//! unread (startup, builds), it never touches the disk.
//!
//! A received snapshot is a plain file ([`SnapshotData::file`]).

use std::future::Future;
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use cairn_storage::Snapshot as EngineSnapshot;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

use crate::snapshot_file::SnapshotDir;
use crate::state_machine::Applied;

/// What a snapshot file is written from.
pub struct Source {
    /// The applied record the view matches.
    pub applied: Applied,
    /// The engine view, taken with `applied`.
    pub view: Arc<dyn EngineSnapshot>,
    /// The region's share of the engine (`None`: no MVCC state, the meta
    /// region).
    pub share: Option<cairn_mvcc::Share>,
    /// Where the file is written.
    pub dir: Arc<SnapshotDir>,
}

impl Source {
    fn write(self) -> std::io::Result<std::fs::File> {
        let Source {
            applied,
            view,
            share,
            dir,
        } = self;
        let data = share.iter().flat_map(|s| s.scan(&*view));
        dir.write(&applied, data).map_err(std::io::Error::other)
    }
}

enum State {
    /// Nothing written yet.
    Unwritten(Box<Source>),
    /// The file is being written.
    Writing(JoinHandle<std::io::Result<std::fs::File>>),
    /// The file (written, or received).
    File(tokio::fs::File),
    /// Writing failed; every later operation fails with this.
    Failed(String),
}

/// A region snapshot's bytes: a file, written on first use (see the module
/// essay).
pub struct SnapshotData {
    state: State,
    /// A seek asked for before the file existed.
    queued_seek: Option<SeekFrom>,
}

impl SnapshotData {
    /// Bytes to be written from `source` when first read or sought.
    pub fn unwritten(source: Source) -> Self {
        Self {
            state: State::Unwritten(Box::new(source)),
            queued_seek: None,
        }
    }

    /// Bytes already in `file` (a snapshot being received).
    pub fn file(file: std::fs::File) -> Self {
        Self {
            state: State::File(tokio::fs::File::from_std(file)),
            queued_seek: None,
        }
    }

    /// The file behind these bytes, writing it first if need be.
    pub async fn into_file(mut self) -> std::io::Result<std::fs::File> {
        std::future::poll_fn(|cx| self.poll_file(cx).map_ok(|_| ())).await?;
        match self.state {
            State::File(f) => Ok(f.into_std().await),
            _ => unreachable!("poll_file returned Ready(Ok) only with a file"),
        }
    }

    /// Drives the state to `File`, starting the write if it has not begun.
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<&mut tokio::fs::File>> {
        loop {
            match &mut self.state {
                State::File(_) => break,
                State::Failed(e) => return Poll::Ready(Err(std::io::Error::other(e.clone()))),
                State::Unwritten(_) => {
                    let State::Unwritten(source) =
                        std::mem::replace(&mut self.state, State::Failed(String::new()))
                    else {
                        unreachable!()
                    };
                    self.state =
                        State::Writing(tokio::task::spawn_blocking(move || source.write()));
                }
                State::Writing(job) => {
                    self.state = match ready!(Pin::new(job).poll(cx)) {
                        Ok(Ok(f)) => State::File(tokio::fs::File::from_std(f)),
                        Ok(Err(e)) => State::Failed(format!("writing snapshot: {e}")),
                        Err(e) => State::Failed(format!("snapshot writer: {e}")),
                    };
                }
            }
        }
        let State::File(f) = &mut self.state else {
            unreachable!()
        };
        if let Some(pos) = self.queued_seek.take() {
            Pin::new(&mut *f).start_seek(pos)?;
        }
        Poll::Ready(Ok(f))
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let f = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(f).poll_read(cx, buf)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, pos: SeekFrom) -> std::io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::File(f) => Pin::new(f).start_seek(pos),
            _ => {
                this.queued_seek = Some(pos);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let f = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(f).poll_complete(cx)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let f = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(f).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let f = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(f).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let f = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(f).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::keys::Space;
    use cairn_storage::{Durability, Engine, MemoryEngine, WriteBatch};
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    fn put(engine: &MemoryEngine, space: Space, key: &[u8], value: &[u8]) {
        let mut k = vec![space as u8];
        k.extend_from_slice(key);
        let mut b = WriteBatch::new();
        b.put(k, value.to_vec());
        engine.write(b, Durability::Buffered).unwrap();
    }

    #[tokio::test]
    async fn bytes_are_the_view_at_capture_written_on_first_seek() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(SnapshotDir::open(tmp.path()).unwrap());
        let engine = MemoryEngine::new();
        put(&engine, Space::MvccLatest, b"a", b"1");
        put(&engine, Space::Lease, b"l", b"2");
        let applied = Applied {
            current_revision: 7,
            ..Default::default()
        };
        let source = Source {
            applied,
            view: engine.snapshot(),
            share: Some(cairn_mvcc::Share::everything()),
            dir,
        };
        let mut data = SnapshotData::unwritten(source);
        // Written after the capture: not in the snapshot.
        put(&engine, Space::MvccLatest, b"b", b"3");

        // The chunked sender's first move: learn the length.
        let end = data.seek(SeekFrom::End(0)).await.unwrap();
        data.seek(SeekFrom::Start(0)).await.unwrap();
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(bytes.len() as u64, end);

        let mut file = SnapshotData::file(tempfile::tempfile().unwrap())
            .into_file()
            .await
            .unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        let mut pairs = Vec::new();
        let back = crate::snapshot_file::read(&mut file, |k, v| pairs.push((k, v))).unwrap();
        assert_eq!(back.current_revision, 7);
        let key = |s: Space, k: &[u8]| [&[s as u8][..], k].concat();
        assert_eq!(
            pairs,
            vec![
                (key(Space::MvccLatest, b"a"), b"1".to_vec()),
                (key(Space::Lease, b"l"), b"2".to_vec()),
            ]
        );
    }
}
