//! What the node reports about itself: `Maintenance.Status`, response
//! header fields, every hosted region's Raft state, and the member list.

use cairn_raft::MemberInfo;

use crate::node::{Node, NodeStatus, DATA_REGION, META_REGION};

impl Node {
    /// The data region's current Raft term (for response headers).
    pub fn raft_term(&self) -> u64 {
        self.region(DATA_REGION)
            .map_or(0, |r| r.raft.metrics().borrow().current_term)
    }

    /// The newest revision of the data regions' replicas here (response
    /// headers). Not the first region's alone: an idle region's revision
    /// moves only while someone asks for closes in it (`closes.rs`). One
    /// load, however many regions (`cairn_raft::DataMarks`).
    pub fn revision(&self) -> i64 {
        self.opener.marks.revision()
    }

    /// The newest auth fence the data regions' replicas here have applied.
    pub(crate) fn auth_fence(&self) -> u64 {
        self.opener.marks.auth_fence()
    }

    /// Whether this member has a leader, as etcd's `hasleader` request
    /// metadata (`clientv3.WithRequireLeader`) asks: its replica of the
    /// meta region knows one — that region never sleeps, so a follower cut
    /// off from its leader campaigns and knows none within an election
    /// timeout — and, when the leader is this member, it still reaches a
    /// majority (its read lease holds, or a read-index round answers
    /// within `within`): cut off, it leads no one, as etcd's CheckQuorum
    /// steps such a leader down.
    pub async fn has_leader(&self, within: std::time::Duration) -> bool {
        match self.meta_leader() {
            None => false,
            Some(l) if l != self.id => true,
            Some(_) => {
                let Ok(meta) = self.region(META_REGION) else {
                    return false;
                };
                let round = tokio::time::timeout(within, meta.leader_reads.round()).await;
                matches!(round, Ok(Ok(_)))
            }
        }
    }

    /// The leader this member's replica of the meta region knows now, if
    /// any (the quick look of [`Node::has_leader`]).
    pub fn meta_leader(&self) -> Option<u64> {
        self.region(META_REGION)
            .ok()
            .and_then(|m| m.raft.metrics().borrow().current_leader)
    }

    /// What `Maintenance.Status` reports.
    pub fn status(&self) -> NodeStatus {
        let Ok(r) = self.region(DATA_REGION) else {
            return NodeStatus::default();
        };
        let m = r.raft.metrics().borrow().clone();
        NodeStatus {
            leader: m.current_leader.unwrap_or(0),
            raft_term: m.current_term,
            raft_index: r.shared.committed_index(),
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            db_size: self.engine.size_on_disk() as i64,
            db_size_in_use: self.engine.size_in_use() as i64,
        }
    }

    /// Every region replica this node hosts, by region id: its leader (0 if
    /// none), term, committed and applied indexes.
    pub fn region_statuses(&self) -> Vec<(u64, NodeStatus)> {
        let db_size = self.engine.size_on_disk() as i64;
        let db_size_in_use = self.engine.size_in_use() as i64;
        self.regions
            .all()
            .into_iter()
            .map(|r| {
                let m = r.raft.metrics().borrow().clone();
                let status = NodeStatus {
                    leader: m.current_leader.unwrap_or(0),
                    raft_term: m.current_term,
                    raft_index: r.shared.committed_index(),
                    raft_applied_index: m.last_applied.map_or(0, |l| l.index),
                    db_size,
                    db_size_in_use,
                };
                (r.id, status)
            })
            .collect()
    }

    /// Known members: published attributes, or the Raft membership for
    /// members that have not published yet.
    pub fn members(&self) -> Vec<MemberInfo> {
        let Ok(meta) = self.region(META_REGION) else {
            return Vec::new();
        };
        let published = meta.shared.applied().members;
        let m = meta.raft.metrics().borrow().clone();
        let mut out: Vec<MemberInfo> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                published.get(id).cloned().unwrap_or_else(|| MemberInfo {
                    id: *id,
                    name: String::new(),
                    peer_urls: vec![node.addr.clone()],
                    client_urls: Vec::new(),
                })
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }
}
