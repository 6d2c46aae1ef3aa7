//! Raft messages to one peer, gathered into batches.
//!
//! Every region's leader talks to its followers on its own: a heartbeat
//! per follower ten times a second, an append per follower per write
//! group. With hundreds of awake regions that is thousands of small gRPC
//! calls a second between two members, each paying HTTP/2 framing, header
//! encoding, a task and a few syscalls on both sides, while the regions'
//! own work per message is small. TiKV sends all regions' messages to a
//! store over one batched stream for the same reason.
//!
//! While fewer than [`ALONE_IN_FLIGHT`] messages to a peer await their
//! answers alone, a message goes alone, as every message did before: the
//! traffic of one region or a few pays nothing for batching (measured: a
//! lone client's puts were 0.90× when every message went through the
//! queue). Past that, an [`Outbox`] per peer address queues the appends
//! with entries and the votes of every region. Always alone: snapshot
//! chunks and messages over [`ALONE_BYTES`] (a batch is decoded whole
//! before any of it is served), and empty appends — heartbeats and a
//! leader's read-index rounds, whose latency is what a linearizable read
//! waits on: a batch's extra task hops cost reads at 400 regions 0.62×
//! (docs/benchmarks.md). One task sends them: it takes the first
//! message, waits for one of [`IN_FLIGHT`] call slots, then takes whatever
//! else queued meanwhile (up to [`MAX_MESSAGES`] and [`MAX_BYTES`]) and
//! sends it all as one `RaftBatch` call. Nothing waits on a timer: a lone
//! message goes at once, and messages batch only while calls are being
//! placed. A slot is held only until the peer accepts the call (the
//! request sent and the answer's headers back), not while it serves it:
//! the peer serves every message of a batch at once and streams each
//! answer back as it is ready, so a region slow to answer (a follower
//! fsyncing, a replica applying a snapshot) holds up no other region's
//! messages, in its call or after it.
//!
//! Each message keeps its caller's deadline: the caller waits on its own
//! answer, and a call ends once every message in it is answered, or at
//! the latest deadline among them (holding no slot meanwhile). A message
//! whose caller gave up before it was sent is dropped (openraft waits
//! 100 ms for an append): a peer that stops answering gets no backlog of
//! stale messages.
//!
//! A peer that does not know `RaftBatch` (an older version, mid-upgrade)
//! answers the call `Unimplemented` before serving anything; its callers
//! then send alone. After [`REPROBE_AFTER`] the outbox asks again with an
//! empty batch, and batches again only once one is taken: no real message
//! pays a refused call twice a minute during a slow rolling upgrade.
//!
//! [`MAX_MESSAGES`] is part of the protocol: a peer refuses a larger
//! batch, so a later version may lower it but not raise it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::peerpb::peer_client::PeerClient;
use cairn_api::peerpb::{RaftBatchRequest, RaftBatchResult, RaftReply, RaftRequest};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Messages to one peer that may await their answers alone at once
/// (counting those that could have gone in a batch; heartbeats, snapshot
/// chunks and large messages always go alone, uncounted).
pub const ALONE_IN_FLIGHT: usize = 4;
/// Calls being placed to one peer at once (waiting for the peer to
/// accept them).
pub const IN_FLIGHT: usize = 4;
/// At most this many messages in one call.
pub const MAX_MESSAGES: usize = 256;
/// A call takes no message that would bring its payloads past this.
pub const MAX_BYTES: usize = 1 << 20;
/// A message this large goes alone, never in a batch.
pub const ALONE_BYTES: usize = 256 << 10;
/// How long after a peer refused batches the outbox asks again.
const REPROBE_AFTER: Duration = Duration::from_secs(60);
/// How long that question may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a queued message's caller gets back.
pub enum Sent {
    /// The peer's answer to the message (or why there is none).
    Answer(Result<RaftReply, Status>),
    /// The peer takes no batches and did not see the message: send it
    /// alone.
    NotBatched,
}

struct Queued {
    req: RaftRequest,
    deadline: Instant,
    answer: oneshot::Sender<Sent>,
}

/// The queue of Raft messages to one peer, and the task that sends them.
pub struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    /// Messages awaiting their answers alone.
    alone: Arc<AtomicUsize>,
    /// When the peer last answered a batch `Unimplemented` (None: it
    /// takes batches, as far as known).
    refused_at: Arc<Mutex<Option<Instant>>>,
    /// An empty batch asking whether the peer takes batches now is out.
    probing: Arc<AtomicBool>,
    client: PeerClient<Channel>,
    stamp: Stamp,
}

/// Stamps a call with the sender's cluster and member headers.
pub type Stamp = Arc<dyn Fn(RaftBatchRequest) -> tonic::Request<RaftBatchRequest> + Send + Sync>;

impl Outbox {
    /// An outbox sending through `client`, each call stamped by `stamp`
    /// (the sender's cluster and member headers). Spawns its task, which
    /// ends when the outbox is dropped.
    pub fn new(client: PeerClient<Channel>, stamp: Stamp) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let refused_at = Arc::new(Mutex::new(None));
        let task = send_batches(client.clone(), stamp.clone(), rx, refused_at.clone());
        tokio::spawn(task);
        Self {
            tx,
            alone: Arc::new(AtomicUsize::new(0)),
            refused_at,
            probing: Arc::new(AtomicBool::new(false)),
            client,
            stamp,
        }
    }

    /// A slot for sending one message alone, if fewer than
    /// [`ALONE_IN_FLIGHT`] are out; held until its answer.
    pub fn alone(&self) -> Option<AloneSlot> {
        self.alone
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ALONE_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| AloneSlot(self.alone.clone()))
    }

    /// Whether `req` should go in a batch (false: send it alone).
    pub fn takes(&self, req: &RaftRequest) -> bool {
        let refused_at = *self.refused_at.lock();
        match refused_at {
            None => req.payload.len() < ALONE_BYTES,
            Some(at) => {
                if at.elapsed() >= REPROBE_AFTER {
                    self.reprobe();
                }
                false
            }
        }
    }

    /// Asks the peer, with an empty batch, whether it takes batches now.
    fn reprobe(&self) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut client = self.client.clone();
        let call = (self.stamp)(RaftBatchRequest::default());
        let (refused_at, probing) = (self.refused_at.clone(), self.probing.clone());
        tokio::spawn(async move {
            let asked = tokio::time::timeout(PROBE_TIMEOUT, client.raft_batch(call)).await;
            *refused_at.lock() = match asked {
                Ok(Ok(_)) => None,
                _ => Some(Instant::now()),
            };
            probing.store(false, Ordering::Release);
        });
    }

    /// Queues `req`, whose caller waits for it until `deadline`; the
    /// answer comes when the peer served it. None when the outbox's task
    /// is gone (the caller drops this outbox and tries again).
    pub async fn send(&self, req: RaftRequest, deadline: Instant) -> Option<Sent> {
        let (answer, rx) = oneshot::channel();
        let q = Queued {
            req,
            deadline,
            answer,
        };
        self.tx.send(q).ok()?;
        Some(rx.await.unwrap_or_else(|_| {
            Sent::Answer(Err(Status::unavailable(
                "peer batch ended without an answer",
            )))
        }))
    }

    /// Whether the task that sends this outbox's batches still runs.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// One message out alone (see [`Outbox::alone`]).
pub struct AloneSlot(Arc<AtomicUsize>);

impl Drop for AloneSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn send_batches(
    client: PeerClient<Channel>,
    stamp: Stamp,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    refused_at: Arc<Mutex<Option<Instant>>>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A message held back from the last call (it would have made it too
    // large).
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while the slot was awaited goes too; not a
        // message its caller gave up on.
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(q) = next.take().or_else(|| rx.try_recv().ok()) {
            if q.answer.is_closed() {
                continue;
            }
            if !batch.is_empty()
                && (batch.len() >= MAX_MESSAGES || bytes + q.req.payload.len() > MAX_BYTES)
            {
                carried = Some(q);
                break;
            }
            bytes += q.req.payload.len();
            batch.push(q);
        }
        if batch.is_empty() {
            continue;
        }
        if refused_at.lock().is_some() {
            // Queued before the peer's refusal came back.
            for q in batch {
                let _ = q.answer.send(Sent::NotBatched);
            }
            continue;
        }
        crate::metrics::PEER_BATCH_MESSAGES.observe(batch.len() as f64);
        let deadline = batch.iter().map(|q| q.deadline).max().expect("not empty");
        let mut answers = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for q in batch {
            answers.push(Some(q.answer));
            requests.push(q.req);
        }
        let call = stamp(RaftBatchRequest { requests });
        let mut client = client.clone();
        let refused_at = refused_at.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::from_std(deadline);
            let err = match tokio::time::timeout_at(deadline, client.raft_batch(call)).await {
                Err(_) => Status::deadline_exceeded("peer batch timed out"),
                Ok(Err(status)) if status.code() == Code::Unimplemented => {
                    *refused_at.lock() = Some(Instant::now());
                    for a in answers.into_iter().flatten() {
                        let _ = a.send(Sent::NotBatched);
                    }
                    return;
                }
                Ok(Err(status)) => status,
                Ok(Ok(stream)) => {
                    // Accepted: the slot goes to the next call while this
                    // one's answers come in.
                    drop(slot);
                    let read = read_answers(stream.into_inner(), &mut answers);
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(Ok(())) => Status::unavailable("peer batch ended without an answer"),
                        Ok(Err(status)) => status,
                        Err(_) => Status::deadline_exceeded("peer batch timed out"),
                    }
                }
            };
            for a in answers.into_iter().flatten() {
                let _ = a.send(Sent::Answer(Err(err.clone())));
            }
        });
    }
}

/// Hands each streamed answer to its caller; returns once the stream
/// ends or fails, or every message is answered.
async fn read_answers(
    mut stream: tonic::Streaming<RaftBatchResult>,
    answers: &mut [Option<oneshot::Sender<Sent>>],
) -> Result<(), Status> {
    let mut unanswered = answers.len();
    while unanswered > 0 {
        let Some(r) = stream.message().await? else {
            return Ok(());
        };
        if let Some(a) = answers.get_mut(r.index as usize).and_then(Option::take) {
            unanswered -= 1;
            let _ = a.send(Sent::Answer(answer_of(r)));
        }
    }
    Ok(())
}

fn answer_of(r: RaftBatchResult) -> Result<RaftReply, Status> {
    match r.code {
        0 => Ok(RaftReply { payload: r.payload }),
        // Only a call can be refused as unknown, not one of its messages.
        c if c == Code::Unimplemented as u32 => Err(Status::unknown(r.message)),
        c => Err(Status::new(Code::from_i32(c as i32), r.message)),
    }
}

/// The batch result for the request at `index`, from what serving it
/// alone would have answered.
pub fn result_of(index: usize, answer: Result<RaftReply, Status>) -> RaftBatchResult {
    match answer {
        Ok(reply) => RaftBatchResult {
            index: index as u32,
            payload: reply.payload,
            code: 0,
            message: String::new(),
        },
        Err(status) => RaftBatchResult {
            index: index as u32,
            payload: Vec::new(),
            code: status.code() as u32,
            message: status.message().to_string(),
        },
    }
}
