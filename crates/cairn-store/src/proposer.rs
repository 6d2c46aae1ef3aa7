//! The write path of a region's leader: group commit and TSO batching.
//!
//! Client writes queue here. The proposer takes everything queued, fetches
//! one run of timestamps for the whole group (one TSO request), and hands the
//! commands to openraft in timestamp order without waiting for each to
//! commit; openraft appends them together and the node's log writer covers
//! them with one fsync. Replies are delivered as entries apply.
//!
//! Ordering: groups are proposed one after another and TSO runs are
//! increasing, so log order equals timestamp order; the state machine also
//! enforces `revision = max(ts, current + 1)`, so revisions stay strictly
//! increasing even across leader changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cairn_raft::{Command, Raft, Reply};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result};

/// What to propose.
pub enum Proposal {
    /// A prost-encoded `TxnRequest`; gets a timestamp.
    Txn(Vec<u8>),
    /// Any other command (no timestamp).
    Plain(Command),
}

type Pending = (Proposal, oneshot::Sender<Result<Reply>>);

/// A source of timestamps (the TSO client).
pub type TimestampSource =
    Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = Result<i64>> + Send>> + Send + Sync>;

/// Handle to a region's proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

const MAX_GROUP: usize = 4096;

impl Proposer {
    /// Starts the proposer of `raft`.
    pub fn start(raft: Raft, timestamps: TimestampSource) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(65_536);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                let need = group
                    .iter()
                    .filter(|(p, _)| matches!(p, Proposal::Txn(_)))
                    .count() as u32;
                let mut ts = if need > 0 {
                    match timestamps(need).await {
                        Ok(t) => t,
                        Err(e) => {
                            for (_, reply) in group {
                                let _ = reply.send(Err(e.clone()));
                            }
                            continue;
                        }
                    }
                } else {
                    0
                };
                for (p, reply) in group {
                    let cmd = match p {
                        Proposal::Txn(txn) => {
                            let c = Command::Txn { ts, txn };
                            ts += 1;
                            c
                        }
                        Proposal::Plain(c) => c,
                    };
                    match raft.client_write_ff(cmd).await {
                        Ok(rx) => {
                            tokio::spawn(async move {
                                let r = match rx.await {
                                    Ok(Ok(resp)) => Ok(resp.data),
                                    Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                                        Err(Error::NotLeader {
                                            leader: f.leader_id,
                                        })
                                    }
                                    Ok(Err(e)) => Err(Error::Internal(e.to_string())),
                                    // The responder was dropped: leadership lost mid-way,
                                    // the entry may or may not commit.
                                    Err(_) => Err(Error::Timeout),
                                };
                                let _ = reply.send(r);
                            });
                        }
                        Err(_) => {
                            let _ = reply.send(Err(Error::Stopped));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Proposes and waits for the applied reply.
    pub async fn propose(&self, p: Proposal) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((p, tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

/// Maps a direct `client_write` failure (used outside the proposer).
pub fn client_write_error(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> Error {
    crate::tso::write_error(e)
}
