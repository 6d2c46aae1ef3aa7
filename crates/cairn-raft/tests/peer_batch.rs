//! Raft messages to a peer travel in batches (`peer_batch.rs`), through
//! openraft's network interface, against a stand-in peer service: each
//! caller gets its own answer, a slow answer holds up no other message,
//! and a peer that does not know batches (an older version) gets each
//! message alone. (The real service, `cairn-store`'s `PeerService`, serves
//! every Raft message of the in-process cluster tests.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::peerpb::peer_server::{Peer, PeerServer};
use cairn_api::peerpb::{
    ForwardReply, ForwardRequest, RaftBatchRequest, RaftBatchResult, RaftReply, RaftRequest,
    TsoReply, TsoRequest,
};
use cairn_raft::network::{PeerPool, RegionNetwork};
use cairn_raft::peer_batch::result_of;
use cairn_raft::{decode, encode, NodeId};
use futures::StreamExt;
use openraft::error::RaftError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{BasicNode, Vote};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Grants a vote iff its region is even, echoing the vote asked for.
/// A region that is a multiple of `slow_every` answers after `slow`.
#[derive(Clone, Default)]
struct StandIn {
    takes_batches: bool,
    slow: Duration,
    slow_every: u64,
    singles: Arc<AtomicUsize>,
    batches: Arc<AtomicUsize>,
    /// The regions of each batch, as received.
    batched: Arc<Mutex<Vec<Vec<u64>>>>,
}

impl StandIn {
    fn slow(&self, region: u64) -> bool {
        self.slow_every > 0 && region.is_multiple_of(self.slow_every)
    }

    /// Whether some call held both a slow and a fast message.
    fn mixed_call(&self) -> bool {
        let batched = self.batched.lock().unwrap();
        batched
            .iter()
            .any(|b| b.iter().any(|r| self.slow(*r)) && b.iter().any(|r| !self.slow(*r)))
    }

    async fn answer(&self, req: RaftRequest) -> Result<RaftReply, Status> {
        if self.slow(req.region_id) {
            tokio::time::sleep(self.slow).await;
        }
        let vote: VoteRequest<NodeId> =
            decode(&req.payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let granted = req.region_id.is_multiple_of(2);
        let res: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Ok(VoteResponse::new(vote.vote, None, granted));
        Ok(RaftReply {
            payload: encode(&res).map_err(|e| Status::internal(e.to_string()))?,
        })
    }
}

#[tonic::async_trait]
impl Peer for StandIn {
    async fn raft(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(self.answer(req.into_inner()).await?))
    }

    async fn raft_batch(
        &self,
        req: Request<RaftBatchRequest>,
    ) -> Result<Response<BoxStream<RaftBatchResult>>, Status> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        if !self.takes_batches {
            return Err(Status::unimplemented("not in this version"));
        }
        let requests = req.into_inner().requests;
        let regions = requests.iter().map(|r| r.region_id).collect();
        self.batched.lock().unwrap().push(regions);
        let this = self.clone();
        let n = requests.len().max(1);
        let answers = futures::stream::iter(requests.into_iter().enumerate())
            .map(move |(i, r)| {
                let this = this.clone();
                async move { Ok(result_of(i, this.answer(r).await)) }
            })
            .buffer_unordered(n);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn forward(&self, _: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn tso(&self, _: Request<TsoRequest>) -> Result<Response<TsoReply>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
}

/// Serves `peer` on a free port; its address.
async fn serve(peer: StandIn) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// Asks for a vote of term `region + 1` in `region` of the node at
/// `addr`, waiting up to 5 s: whether it was granted, after checking the
/// answer is to this request.
async fn vote(pool: &Arc<PeerPool>, addr: &str, region: u64) -> Result<bool, String> {
    let mut net = RegionNetwork::new(region, pool.clone());
    let mut peer = net.new_client(2, &BasicNode::new(addr)).await;
    let asked = Vote::new(region + 1, 1);
    let r = peer
        .vote(
            VoteRequest::new(asked, None),
            RPCOption::new(Duration::from_secs(5)),
        )
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        r.vote, asked,
        "region {region} got another request's answer"
    );
    Ok(r.vote_granted)
}

/// Asks for votes in regions 0..n at once; checks every answer.
async fn votes_at_once(pool: &Arc<PeerPool>, addr: &str, n: u64) {
    let calls: Vec<_> = (0..n)
        .map(|region| {
            let (pool, addr) = (pool.clone(), addr.to_string());
            tokio::spawn(async move { (region, vote(&pool, &addr, region).await) })
        })
        .collect();
    for c in calls {
        let (region, granted) = c.await.unwrap();
        assert_eq!(granted, Ok(region.is_multiple_of(2)), "region {region}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_share_calls_and_each_gets_its_own_answer() {
    let peer = StandIn {
        takes_batches: true,
        ..Default::default()
    };
    let addr = serve(peer.clone()).await;
    let pool = PeerPool::new(1, 7, None);
    votes_at_once(&pool, &addr, 200).await;
    // A few went alone (no more than may be out alone at once), the rest
    // in shared calls.
    let singles = peer.singles.load(Ordering::SeqCst);
    let batched = peer.batched.lock().unwrap().clone();
    assert_eq!(batched.iter().map(Vec::len).sum::<usize>() + singles, 200);
    let calls = batched.len() + singles;
    assert!(
        calls < 100,
        "200 messages in {calls} calls: few shared a call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_holds_up_no_other_message() {
    let peer = StandIn {
        takes_batches: true,
        slow: Duration::from_secs(4),
        slow_every: 8,
        ..Default::default()
    };
    let addr = serve(peer.clone()).await;
    let pool = PeerPool::new(1, 7, None);
    let send = |region: u64| {
        let (pool, addr) = (pool.clone(), addr.clone());
        let sent = Instant::now();
        tokio::spawn(async move { (region, vote(&pool, &addr, region).await, sent.elapsed()) })
    };
    // More slow messages than may go alone and than calls may be placed at
    // once, each in a call of its own: a call holds no slot while it is
    // served.
    let mut calls = Vec::new();
    for _ in 0..cairn_raft::peer_batch::ALONE_IN_FLIGHT + cairn_raft::peer_batch::IN_FLIGHT + 1 {
        calls.push(send(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then bursts of slow and fast messages, until one call held both.
    for burst in 0..10u64 {
        calls.extend((burst * 64..(burst + 1) * 64).map(send));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mixed = peer.mixed_call();
        if mixed {
            break;
        }
    }
    let mut fast = 0;
    for c in calls {
        let (region, granted, took) = c.await.unwrap();
        assert_eq!(granted, Ok(region.is_multiple_of(2)), "region {region}");
        if !peer.slow(region) {
            fast += 1;
            assert!(
                took < Duration::from_secs(2),
                "region {region} took {took:?}"
            );
        }
    }
    assert!(fast > 0);
    let mixed = peer.mixed_call();
    assert!(mixed, "no call held both a slow and a fast message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_batches_gets_each_message_alone() {
    let peer = StandIn::default();
    let addr = serve(peer.clone()).await;
    let pool = PeerPool::new(1, 7, None);
    votes_at_once(&pool, &addr, 100).await;
    assert_eq!(peer.singles.load(Ordering::SeqCst), 100);
    // Asked whether it takes batches by the calls placed before its first
    // refusal came back; not again for a while.
    let asked = peer.batches.load(Ordering::SeqCst);
    assert!(
        (1..=cairn_raft::peer_batch::IN_FLIGHT).contains(&asked),
        "asked {asked} times"
    );
    for region in 0..10u64 {
        assert_eq!(
            vote(&pool, &addr, region).await,
            Ok(region.is_multiple_of(2))
        );
    }
    assert_eq!(peer.batches.load(Ordering::SeqCst), asked);
}
