//! Calls to other nodes over the `Peer` service: forwarded region requests
//! and TSO requests. Both respect the fault switchboard, like Raft traffic.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::peerpb::{ForwardRequest, TsoRequest};
use cairn_mvcc::locks::KeySpan;
use cairn_raft::network::PeerPool;
use cairn_raft::{decode, encode, AuthStamp, Command, Raft, Reply};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A request forwarded to the node believed to lead a region.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardOp {
    /// Propose a prost-encoded `TxnRequest` (data region).
    Txn(Vec<u8>),
    /// Propose a compaction (data region).
    Compact(i64),
    /// Confirm leadership and return the read index.
    ReadIndex,
    /// Propose a command as is (no timestamp).
    Plain(Command),
    /// Revoke a lease (data region; gets a timestamp).
    Revoke(i64),
    /// Refresh a lease on the region leader's lessor.
    LeaseKeepAlive(i64),
    /// Read a lease's remaining TTL from the region leader's lessor.
    LeaseTimeToLive(i64),
    /// This member's hash of its history up to a revision, once it has
    /// applied that far (any member answers; the corruption check of
    /// earlier versions, now [`ForwardOp::HashStoreAt`]).
    HashKv(i64),
    /// Campaign for the region now, if the member still follows `leader`
    /// in `term` (the leader hands over; MoveLeader).
    Campaign { term: u64, leader: u64 },
    /// A client write (`Txn`, `Compact`, `Plain`, `Revoke`) checked against
    /// auth revision `auth`: proposed as `Command::Checked` (see `auth`).
    Checked { auth: u64, op: Box<ForwardOp> },
    /// A lease put or revoke by a caller who may write only `writable`,
    /// checked against auth revision `auth`: proposed as
    /// `Command::CheckedLease`. (A variant of its own, after the others:
    /// a member of the previous version still reads every other op.)
    CheckedLease {
        auth: u64,
        writable: cairn_auth::Writable,
        op: Box<ForwardOp>,
    },
    /// Once every write this leader stamped at or below the timestamp is
    /// answered, confirm leadership and return the read index (a read at
    /// that timestamp across regions; see `node::range_across`).
    ReadIndexAfter(i64),
    /// Meta region: a new TSO timestamp (a transaction across regions
    /// commits at it), handed out by a leader that then confirmed it still
    /// leads (read lease or a quorum round), so it is above every
    /// timestamp handed out before the request.
    CommitTimestamp,
    /// Data region: once every write this leader stamped at or below
    /// `commit_ts` is answered (and none will be stamped so low again),
    /// propose `Command::CommitLocked` in this leader's term — a part of a
    /// transaction across regions commits after every single-region write
    /// below it (`node::txn_across`).
    CommitLocked {
        start_ts: i64,
        commit_ts: i64,
        path: Vec<bool>,
    },
    /// Meta region: the newest TSO timestamp handed out (`Tso::newest`),
    /// by a leader that then confirmed it still leads, so it is at or
    /// above every timestamp handed out before the request and below
    /// every one handed out after the answer: a read's timestamp.
    ReadTimestamp,
    /// Data region: a read timestamp (as `ReadTimestamp`, fetched by this
    /// region's leader — usually the meta leader too, so no extra hop),
    /// then, once every write this leader stamped at or below it is
    /// answered, its read index: a read within this one region at that
    /// timestamp, in one round (`Node::caught_up_at_newest`).
    ReadIndexAtNewest,
    /// Hand the region's leadership to member `target` (the hand-over of
    /// MoveLeader, see `transfer`): the data leader asks the meta leader
    /// for the TSO (`tso::colocate`).
    HandOver(u64),
    /// Answer once this member's replica of the region has applied the
    /// freeze at this epoch for a merge, or this member already absorbed
    /// the region (any member answers; `node::merge`).
    AwaitFreeze(u64),
    /// [`ForwardOp::HashKv`] of the first data region's keys at this
    /// epoch only (the corruption check of earlier versions, which hashed
    /// the first region alone): answered while that region is the only
    /// one and at that epoch, else `EpochMismatch` (skipped this round).
    HashKvAt { revision: i64, epoch: u64 },
    /// Data region: someone here waits for the region's resolved revision
    /// to move while it is idle (a watch, a serializable read): close
    /// timestamps in it for a while (`node::closes`).
    WantCloses,
    /// Any member: this member is up; answers [`ForwardOk::Beat`]
    /// (`node::hibernate`).
    Beat,
    /// Any member: its hash of the whole store's history up to `revision`
    /// (every region, `node::store_hash`), its regions caught up through
    /// their leaders (`leaders`) or by themselves; answers
    /// [`ForwardOk::StoreHash`] (the corruption check).
    HashStoreAt { revision: i64, leaders: bool },
    /// Any member, from a leader closing idle regions beside the log
    /// (`node::side_closes`): which of `check` it still votes for as they
    /// say (answers [`ForwardOk::SideCloses`]), and the closes `proved`
    /// to take up. (A variant of its own, after the others: a member of
    /// the previous version refuses it, and gets closes in the log.)
    SideCloses {
        check: Vec<VoteCheck>,
        proved: Vec<(u64, cairn_raft::SideClose)>,
    },
    /// [`ForwardOp::ReadIndexAfter`] for a hash of the whole store
    /// (`node::store_hash`): the same answer, but a hibernating leader
    /// stays asleep for it. A hash asks every region, and one waking each
    /// for a single read index kept hundreds of regions heartbeating
    /// for seconds after every corruption check. (A variant of its own,
    /// after the others: a member of the previous version refuses it.)
    ReadIndexAfterQuietly(i64),
    /// Any member: its hash of each key span's history up to the span's
    /// own revision, its regions caught up by themselves (the start-up
    /// corruption check: one span per region of the member asking, at
    /// the revision that region resolved there); answers
    /// [`ForwardOk::SpanHashes`]. (A variant of its own, after the
    /// others: a member of the previous version refuses it, and is asked
    /// for one hash of the whole store instead.)
    HashSpansAt(Vec<(KeySpan, i64)>),
    /// Any member: readers on the sender wait on these regions, which
    /// it believes this member leads: close them soon
    /// (`node::close_hurry`). (A variant of its own, after the others: a
    /// member of the previous version refuses it, and closes them at its
    /// cadence, as wanted.)
    HurryCloses(Vec<u64>),
}

/// A leader's question to a replica of one of its regions: does it still
/// vote for `leader` in `term`?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteCheck {
    pub region: u64,
    pub term: u64,
    pub leader: u64,
}

impl ForwardOp {
    /// True for a prewrite (checked or not) or a part's commit: a lock it
    /// meets is its coordinator's to handle (after releasing its own —
    /// waiting while holding them could wait on a transaction that waits
    /// on it).
    pub fn coordinator_handles_locks(&self) -> bool {
        match self {
            ForwardOp::Plain(Command::Prewrite { .. }) | ForwardOp::CommitLocked { .. } => true,
            ForwardOp::Checked { op, .. } | ForwardOp::CheckedLease { op, .. } => {
                op.coordinator_handles_locks()
            }
            _ => false,
        }
    }

    /// True for an op a leader serves by proposing it to its region's log
    /// (a write, a compaction, a part of a transaction across regions): it
    /// needs no Raft ticks, so it does not wake a hibernating region
    /// (`node::hibernate`).
    pub fn proposes(&self) -> bool {
        match self {
            ForwardOp::Txn(_)
            | ForwardOp::Compact(_)
            | ForwardOp::Plain(_)
            | ForwardOp::Revoke(_)
            | ForwardOp::CommitLocked { .. } => true,
            ForwardOp::Checked { op, .. } | ForwardOp::CheckedLease { op, .. } => op.proposes(),
            _ => false,
        }
    }

    /// True for an op that wakes the hibernating replica serving it
    /// (`node::hibernate`): a read, whose read lease comes from heartbeat
    /// rounds, a lease refresh, a hand-over. Not a proposal (a sleeping
    /// region replicates and commits without ticks); not an ask for
    /// closes (those come every second while a watch stands, and are made
    /// beside the log); not a hash's read index (one round, no ticks);
    /// and not a member's hash of the whole store, addressed to the first
    /// region but answered by the member (a follower replica woken under
    /// a leader that sleeps on hears nothing, and campaigns).
    pub fn wakes(&self) -> bool {
        !self.proposes()
            && !matches!(
                self,
                ForwardOp::WantCloses
                    | ForwardOp::HurryCloses(_)
                    | ForwardOp::ReadIndexAfterQuietly(_)
                    | ForwardOp::HashKv(_)
                    | ForwardOp::HashKvAt { .. }
                    | ForwardOp::HashStoreAt { .. }
                    | ForwardOp::HashSpansAt(_)
            )
    }
}

impl ForwardOp {
    /// True for an op that changes nothing a client sees when a leader
    /// gets it twice — a read, a lease refresh, a hash, a beat — so a
    /// forward of it still waiting on one leader may be given up and sent
    /// to the next without knowing whether the first arrived.
    pub fn resend_safe(&self) -> bool {
        matches!(
            self,
            ForwardOp::ReadIndex
                | ForwardOp::ReadIndexAfter(_)
                | ForwardOp::ReadIndexAfterQuietly(_)
                | ForwardOp::ReadTimestamp
                | ForwardOp::ReadIndexAtNewest
                | ForwardOp::LeaseKeepAlive(_)
                | ForwardOp::LeaseTimeToLive(_)
                | ForwardOp::HashKv(_)
                | ForwardOp::HashKvAt { .. }
                | ForwardOp::HashStoreAt { .. }
                | ForwardOp::HashSpansAt(_)
                | ForwardOp::WantCloses
                | ForwardOp::HurryCloses(_)
                | ForwardOp::Beat
                | ForwardOp::SideCloses { .. }
        )
    }

    /// `op` as checked under `stamp`.
    pub fn stamped(stamp: AuthStamp, op: ForwardOp) -> Self {
        let op = Box::new(op);
        match stamp.writable {
            None => ForwardOp::Checked {
                auth: stamp.revision,
                op,
            },
            Some(writable) => ForwardOp::CheckedLease {
                auth: stamp.revision,
                writable,
                op,
            },
        }
    }
}

/// A member's hash as it travels: hash, revision, highest compaction
/// revision, compaction map (see `node::StoreHash`).
pub(crate) type HashParts = (u32, i64, i64, Vec<(Vec<u8>, i64)>);

/// The answer to a [`ForwardOp`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardOk {
    /// The applied command's reply.
    Reply(Reply),
    /// The read index.
    ReadIndex(u64),
    /// A lease's TTL after a keep-alive (0: no such lease).
    Ttl(i64),
    /// (remaining, granted, keys) of a lease, if it exists.
    TimeToLive(Option<(i64, i64, Vec<Vec<u8>>)>),
    /// A member's history hash: (hash, revision, compaction revision).
    Hash(u32, i64, i64),
    /// Done, nothing to report.
    Done,
    /// A confirmed TSO timestamp.
    Timestamp(i64),
    /// A read timestamp and the read index after it.
    TimestampedIndex(i64, u64),
    /// A member's boot id, the regions it leads and those asleep there
    /// (`ForwardOp::Beat`).
    Beat {
        boot: u64,
        leading: Vec<u64>,
        asleep: Vec<u64>,
    },
    /// A member's hash of the whole store (`ForwardOp::HashStoreAt`):
    /// hash, revision, highest compaction revision, and its compaction
    /// map ((first key, compaction revision) runs in key order).
    StoreHash {
        hash: u32,
        revision: i64,
        compacted: i64,
        compactions: Vec<(Vec<u8>, i64)>,
    },
    /// The regions of a [`ForwardOp::SideCloses`] check whose replica
    /// here still votes as asked.
    SideCloses { still: Vec<u64> },
    /// A member's hash of each span asked for
    /// (`ForwardOp::HashSpansAt`), in order: as `StoreHash` gives one,
    /// `None` where it had none (a revision compacted here or not yet
    /// resolved in time, regions that did not tile the span).
    SpanHashes(Vec<Option<HashParts>>),
}

/// Typed answers: each entry point takes the one kind of answer its op
/// gets, as a value (a refused command as `Error::Rejected`), and a peer
/// that answers with another kind (a bug, or a mixed-version cluster) is
/// an internal error naming both — here, once, not at every call site.
impl ForwardOk {
    fn mismatch(self, wanted: &str) -> Error {
        Error::Internal(format!("wanted {wanted}, the leader answered {self:?}"))
    }

    /// An applied command's reply; a refusal as `Error::Rejected`.
    pub(crate) fn reply(self) -> Result<Reply> {
        match self {
            ForwardOk::Reply(Reply::Rejected(r)) => Err(Error::Rejected(r)),
            ForwardOk::Reply(Reply::WrongRegion(_)) => Err(Error::EpochMismatch),
            ForwardOk::Reply(Reply::Locked(lock)) => Err(Error::Locked(lock)),
            ForwardOk::Reply(r) => Ok(r),
            other => Err(other.mismatch("a command's reply")),
        }
    }

    /// An applied Txn's prost-encoded `TxnResponse`.
    pub(crate) fn txn(self) -> Result<Vec<u8>> {
        match self.reply()? {
            Reply::Txn(b) => Ok(b),
            other => Err(ForwardOk::Reply(other).mismatch("a txn response")),
        }
    }

    /// The region's revision after the applied command.
    pub(crate) fn revision(self) -> Result<i64> {
        match self.reply()? {
            Reply::Revision(r) => Ok(r),
            other => Err(ForwardOk::Reply(other).mismatch("a revision")),
        }
    }

    /// The current revision after an applied compaction.
    pub(crate) fn compacted(self) -> Result<i64> {
        match self.reply()? {
            Reply::Compacted { current } => Ok(current),
            other => Err(ForwardOk::Reply(other).mismatch("a compaction")),
        }
    }

    /// The alarms an applied `Command::Alarm` changed.
    pub(crate) fn alarms(self) -> Result<Vec<(u64, i32)>> {
        match self.reply()? {
            Reply::Alarms(a) => Ok(a),
            other => Err(ForwardOk::Reply(other).mismatch("alarms")),
        }
    }

    /// An applied auth command's outcome.
    pub(crate) fn auth(self) -> Result<std::result::Result<u64, cairn_auth::AuthError>> {
        match self.reply()? {
            Reply::Auth(r) => Ok(r),
            other => Err(ForwardOk::Reply(other).mismatch("an auth outcome")),
        }
    }

    /// A region's freeze for a merge.
    pub(crate) fn freeze(self) -> Result<cairn_raft::Freeze> {
        match self.reply()? {
            Reply::Frozen(f) => Ok(*f),
            other => Err(ForwardOk::Reply(other).mismatch("a freeze")),
        }
    }

    /// Whether a merge's target absorbed the source (`AbandonMerge`).
    pub(crate) fn absorbed(self) -> Result<bool> {
        match self.reply()? {
            Reply::Absorbed => Ok(true),
            Reply::Done => Ok(false),
            other => Err(ForwardOk::Reply(other).mismatch("a merge's fate")),
        }
    }

    /// Done, nothing to report (not a command's reply).
    pub(crate) fn done(self) -> Result<()> {
        match self {
            ForwardOk::Done => Ok(()),
            other => Err(other.mismatch("done")),
        }
    }

    /// A command applied with nothing to report.
    pub(crate) fn applied(self) -> Result<()> {
        match self.reply()? {
            Reply::Done => Ok(()),
            other => Err(ForwardOk::Reply(other).mismatch("done")),
        }
    }

    /// A transaction's fate as a region knows it.
    pub(crate) fn outcome(self) -> Result<Option<cairn_mvcc::locks::Outcome>> {
        match self.reply()? {
            Reply::Outcome(o) => Ok(o),
            other => Err(ForwardOk::Reply(other).mismatch("a transaction's outcome")),
        }
    }

    /// A confirmed TSO timestamp.
    pub(crate) fn timestamp(self) -> Result<i64> {
        match self {
            ForwardOk::Timestamp(t) => Ok(t),
            other => Err(other.mismatch("a timestamp")),
        }
    }

    /// A read timestamp and the region leader's read index after it.
    pub(crate) fn timestamped_index(self) -> Result<(i64, u64)> {
        match self {
            ForwardOk::TimestampedIndex(t, index) => Ok((t, index)),
            other => Err(other.mismatch("a timestamp and a read index")),
        }
    }

    /// The leader's read index.
    pub(crate) fn read_index(self) -> Result<u64> {
        match self {
            ForwardOk::ReadIndex(i) => Ok(i),
            other => Err(other.mismatch("a read index")),
        }
    }

    /// A lease's TTL after a keep-alive (0: no such lease).
    pub(crate) fn ttl(self) -> Result<i64> {
        match self {
            ForwardOk::Ttl(t) => Ok(t),
            other => Err(other.mismatch("a TTL")),
        }
    }

    /// A lease's (remaining, granted, keys), if it exists.
    #[allow(clippy::type_complexity)]
    pub(crate) fn time_to_live(self) -> Result<Option<(i64, i64, Vec<Vec<u8>>)>> {
        match self {
            ForwardOk::TimeToLive(t) => Ok(t),
            other => Err(other.mismatch("a lease's time to live")),
        }
    }

    /// A member's hash of the whole store.
    pub(crate) fn store_hash(self) -> Result<crate::node::StoreHash> {
        match self {
            ForwardOk::StoreHash {
                hash,
                revision,
                compacted,
                compactions,
            } => Ok(crate::node::StoreHash::from_parts(
                hash,
                revision,
                compacted,
                compactions,
            )),
            other => Err(other.mismatch("a store hash")),
        }
    }

    /// A member's hashes of spans, in the order asked.
    pub(crate) fn span_hashes(self) -> Result<Vec<Option<crate::node::StoreHash>>> {
        match self {
            ForwardOk::SpanHashes(hashes) => Ok(hashes
                .into_iter()
                .map(|h| h.map(|(h, r, c, m)| crate::node::StoreHash::from_parts(h, r, c, m)))
                .collect()),
            other => Err(other.mismatch("span hashes")),
        }
    }
}

/// The peer address of `node` according to `raft`'s membership.
pub fn node_addr(raft: &Raft, node: u64) -> Option<String> {
    let m = raft.metrics();
    let m = m.borrow();
    m.membership_config
        .membership()
        .get_node(&node)
        .map(|n| n.addr.clone())
}

/// Sends `op` for `region` to `target`.
pub async fn forward(
    pool: &Arc<PeerPool>,
    raft: &Raft,
    target: u64,
    region: u64,
    op: &ForwardOp,
) -> Result<ForwardOk> {
    if !pool.faults.pass(pool.me(), target).await {
        return Err(Error::NoLeader);
    }
    let addr = node_addr(raft, target).ok_or(Error::NoLeader)?;
    let mut client = pool.client(&addr).map_err(Error::Internal)?;
    let payload = encode(op)?;
    let call = client.forward(pool.request(ForwardRequest {
        region_id: region,
        payload,
    }));
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Err(_) => Err(Error::Timeout),
        Ok(Err(status)) => Err(forward_failed(&status)),
        Ok(Ok(reply)) => {
            decode::<std::result::Result<ForwardOk, Error>>(&reply.into_inner().payload)?
        }
    }
}

/// What a forwarded call that failed with `status` tells its caller.
/// Connecting failed: nothing was sent, so retrying (elsewhere) is safe.
/// The peer refused it before serving it (bad payload, not a member,
/// region unknown there): said so. Anything else — the connection lost
/// mid-call, which tonic reports as `Unavailable`, `Unknown` ("transport
/// error"), `Internal` or `Cancelled` depending on where it broke — may
/// have come after the leader proposed: the outcome is unknown, a timeout
/// as etcd tells it ("request timed out"), never retried as a write,
/// retried as a read.
fn forward_failed(status: &tonic::Status) -> Error {
    use tonic::Code;
    match status.code() {
        Code::Unavailable if never_sent(status) => Error::NoLeader,
        Code::InvalidArgument => Error::Refused(status.message().to_string()),
        Code::PermissionDenied | Code::NotFound | Code::Unauthenticated | Code::Unimplemented => {
            Error::Internal(status.message().to_string())
        }
        _ => Error::Timeout,
    }
}

/// Resolves once `raft` knows a leader other than `from`. A call to a
/// leader that was paused or cut off never answers, and waiting out its
/// timeout would hold the caller for seconds after the region elected
/// another; a call safe to send twice races this and goes to the new one.
pub async fn leader_changed(raft: &Raft, from: Option<u64>) {
    // Woken by leader changes only (the full metrics change at every step
    // of every entry).
    let mut metrics = raft.server_metrics();
    loop {
        let now = metrics.borrow_and_update().current_leader;
        if now.is_some() && now != from {
            return;
        }
        if metrics.changed().await.is_err() {
            // The Raft is gone: the call's own timeout decides.
            std::future::pending::<()>().await;
        }
    }
}

/// Asks `target` (the meta leader) for `count` timestamps.
pub async fn tso(pool: &Arc<PeerPool>, meta: &Raft, target: u64, count: u32) -> Result<i64> {
    if !pool.faults.pass(pool.me(), target).await {
        return Err(Error::NoLeader);
    }
    let addr = node_addr(meta, target).ok_or(Error::NoLeader)?;
    let mut client = pool.client(&addr).map_err(Error::Internal)?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        client.tso(pool.request(TsoRequest { count })),
    )
    .await
    {
        Err(_) => Err(Error::NoLeader),
        Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
            Err(Error::NotLeader { leader: None })
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => Err(Error::NoLeader),
        Ok(Err(status)) => Err(Error::Internal(status.message().to_string())),
        Ok(Ok(r)) => Ok(r.into_inner().first),
    }
}

/// True when a failed call never reached the peer: the connection was
/// refused or could not be made (hyper's connector failed: "tcp connect
/// error", "error trying to connect", its `Connect` kind), or the stream
/// was refused before anything of it was processed. Not any error
/// that merely mentions a connection: "connection reset", "broken pipe",
/// "error reading a body from connection" come after the request went
/// out, maybe after the leader proposed it, and a retry could apply it
/// twice.
fn never_sent(status: &tonic::Status) -> bool {
    let mut text = format!("{} {:?}", status.message(), status);
    let mut src = std::error::Error::source(status);
    while let Some(e) = src {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        text.push_str(&format!(" {e} {e:?}"));
        src = e.source();
    }
    let t = text.to_ascii_lowercase();
    [
        "tcp connect error",
        "error trying to connect",
        "connecterror",
        "kind: connect,",
        "client error (connect)",
        "connection refused",
        // HTTP/2's REFUSED_STREAM: the peer processed nothing of it.
        "refused stream",
    ]
    .iter()
    .any(|sign| t.contains(sign))
}

#[cfg(test)]
mod never_sent_tests {
    use super::never_sent;

    fn endpoint(port: u16) -> tonic::transport::Endpoint {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap()
    }

    /// How a Range over `channel` fails.
    async fn a_failed_range(channel: tonic::transport::Channel) -> tonic::Status {
        cairn_api::etcdserverpb::kv_client::KvClient::new(channel)
            .range(cairn_api::etcdserverpb::RangeRequest::default())
            .await
            .unwrap_err()
    }

    #[test]
    fn only_a_connection_never_made_counts_as_never_sent() {
        let refused = tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
        );
        assert!(never_sent(&refused));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let with_source = tonic::Status::from_error(Box::new(io));
        assert!(never_sent(&with_source));
        let refused_stream = tonic::Status::unavailable(
            "h2 protocol error: stream no longer needed: refused stream before processing any application logic",
        );
        assert!(never_sent(&refused_stream));
        // What a call to a port nobody listens on really fails with. The
        // port stays bound, never listening, so nobody else takes it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let closed = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            s
        });
        let port = closed.local_addr().unwrap().port();
        let status = rt.block_on(async { a_failed_range(endpoint(port).connect_lazy()).await });
        drop(closed);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(never_sent(&status), "{status:?}");
        // A peer dialed with TLS whose handshake never finishes (a
        // listener that never accepts, as a stopped member's): the
        // connector's own timeout, not the endpoint's, so the call fails
        // as never sent, not as tonic's `Unknown` "transport error".
        let dir = tempfile::tempdir().unwrap();
        let me = cairn_tls::pki::issue(dir.path(), "peer", &["127.0.0.1".to_string()]).unwrap();
        let config = cairn_tls::client_config(&cairn_tls::TlsFiles {
            cert: me.cert.clone(),
            key: me.key.clone(),
            trusted_ca: Some(cairn_tls::pki::ca_path(dir.path())),
            ..Default::default()
        })
        .unwrap();
        let deaf = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = deaf.local_addr().unwrap().port();
        let connector = cairn_tls::Connector::new(config)
            .connect_timeout(std::time::Duration::from_millis(300));
        let status = rt.block_on(async {
            let call = a_failed_range(endpoint(port).connect_with_connector_lazy(connector));
            tokio::time::timeout(std::time::Duration::from_secs(10), call)
                .await
                .expect("the connector's own timeout ends the call")
        });
        drop(deaf);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(never_sent(&status), "{status:?}");
        // After the request went out: its outcome is unknown.
        for after in [
            "connection reset by peer",
            "h2 protocol error: error reading a body from connection",
            "transport error: connection error: broken pipe",
            "Disconnected",
        ] {
            assert!(!never_sent(&tonic::Status::unavailable(after)), "{after}");
        }
    }

    #[test]
    fn a_forward_lost_mid_call_is_a_timeout_whatever_code_tonic_gives_it() {
        use super::{forward_failed, Error};
        for lost in [
            tonic::Status::unknown("transport error"),
            tonic::Status::internal("h2 protocol error: connection reset"),
            tonic::Status::cancelled("operation was canceled"),
            tonic::Status::unavailable("connection reset by peer"),
        ] {
            assert!(matches!(forward_failed(&lost), Error::Timeout), "{lost:?}");
        }
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        assert!(matches!(forward_failed(&refused), Error::NoLeader));
        let bad = tonic::Status::invalid_argument("bad payload");
        assert!(matches!(forward_failed(&bad), Error::Refused(_)));
        let stranger = tonic::Status::permission_denied("peer request without this cluster's ID");
        assert!(matches!(forward_failed(&stranger), Error::Internal(_)));
    }
}
