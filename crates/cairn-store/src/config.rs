//! How a node is told who it is and who its peers are (etcd-style).

use std::path::PathBuf;

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// `--name` of the member.
    pub name: String,
    /// Its peer URL.
    pub peer_url: String,
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's name; must appear in `initial_cluster`.
    pub name: String,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// URLs clients use to reach this member (shown by `member list`).
    pub client_urls: Vec<String>,
    /// URLs peers use to reach this member.
    pub peer_urls: Vec<String>,
    /// The initial cluster (`--initial-cluster`).
    pub initial_cluster: Vec<InitialMember>,
    /// `--initial-cluster-state new` (bootstrap) or `existing`.
    pub new_cluster: bool,
    /// `--initial-cluster-token`: distinguishes clusters with equal members.
    pub cluster_token: String,
    /// Snapshot after this many log entries (openraft snapshot policy).
    pub snapshot_logs: u64,
    /// Also snapshot after the log grew by this many bytes (0: never).
    pub snapshot_log_bytes: u64,
    /// How often the lease leader checkpoints remaining TTLs (etcd: 5 min).
    pub lease_checkpoint_interval: std::time::Duration,
    /// Serve linearizable reads on the leader under a read lease instead of
    /// a quorum round per batch (see `read_lease`); false: always a round.
    pub read_lease: bool,
    /// How often the data region's leader compares every member's history
    /// hash (etcd's `--experimental-corrupt-check-time`; zero: never).
    pub corrupt_check_interval: std::time::Duration,
    /// bcrypt cost of new password hashes (`--bcrypt-cost`, etcd's default 10).
    pub bcrypt_cost: u32,
    /// What `Authenticate` hands out (`--auth-token`).
    pub auth_tokens: TokenConfig,
    /// TLS for dialing `https://` peers (`--peer-cert-file` and friends).
    pub peer_tls: Option<std::sync::Arc<cairn_tls::ClientConfig>>,
    /// When a data region splits by itself (see `node::split_check`).
    pub region_split: SplitPolicy,
    /// Idle data regions stop their Raft ticks, and members beat to each
    /// other instead (`--region-hibernate`; see `node::hibernate`).
    pub hibernate_regions: bool,
    /// The meta region's leader evens out how many data regions each
    /// member leads (`--region-balance-leaders`; see
    /// `node::leader_balance`).
    pub balance_leaders: bool,
    /// Tests only: the fault switchboard this member's peer traffic passes,
    /// kept across its restarts (`None`: a fresh one).
    #[doc(hidden)]
    pub peer_faults: Option<std::sync::Arc<cairn_raft::network::Faults>>,
}

/// When the split checker splits a data region (`--region-split-bytes`,
/// `--region-split-qps`); zero turns either trigger off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitPolicy {
    /// Split a region whose live keys and values pass this many bytes, at
    /// the key that halves them.
    pub bytes: u64,
    /// Split a region that applies more than this many write
    /// transactions a second for ten seconds, at the key that divides its
    /// sampled writes in two.
    pub qps: u64,
    /// Merge a data region into its left neighbour when both are cold and
    /// their live keys and values together stay within this many bytes
    /// (`--region-merge-bytes`; see `node::merge_check`).
    pub merge_bytes: u64,
}

/// The kind of auth token a member issues and accepts.
#[derive(Clone, Debug)]
pub enum TokenConfig {
    /// etcd's `simple` tokens, living `ttl` past their last use
    /// (`--auth-token-ttl`).
    Simple { ttl: std::time::Duration },
    /// Signed JWTs (`--auth-token jwt,...`).
    Jwt(std::sync::Arc<cairn_auth::jwt::JwtKeys>),
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig::Simple {
            ttl: cairn_auth::TOKEN_TTL,
        }
    }
}

/// Parses etcd's `--initial-cluster` (`name=url,name=url`).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(n, u)| InitialMember {
                    name: n.trim().to_string(),
                    peer_url: u.trim().to_string(),
                })
                .ok_or_else(|| format!("bad --initial-cluster entry {p:?}: want name=url"))
        })
        .collect()
}

/// FNV-1a, 64 bit: a stable hash for IDs (std's hasher is not stable).
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// A member's ID: stable for the same name, peer URL and cluster token; never 0.
pub fn member_id(name: &str, peer_url: &str, token: &str) -> u64 {
    fnv64(&[name, peer_url, token]).max(1)
}

/// The cluster ID: stable for the same initial cluster and token.
pub fn cluster_id(initial: &[InitialMember], token: &str) -> u64 {
    let mut parts: Vec<String> = initial
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect();
    parts.sort();
    parts.push(token.to_string());
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    fnv64(&refs).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let m = parse_initial_cluster("a=http://1:2,b=http://3:4").unwrap();
        assert_eq!(
            m[1],
            InitialMember {
                name: "b".into(),
                peer_url: "http://3:4".into()
            }
        );
        assert!(parse_initial_cluster("a=http://1:2,oops").is_err());
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(member_id("a", "u", "t"), member_id("a", "u", "t"));
        assert_ne!(member_id("a", "u", "t"), member_id("b", "u", "t"));
        let m = parse_initial_cluster("b=u2,a=u1").unwrap();
        let m2 = parse_initial_cluster("a=u1,b=u2").unwrap();
        assert_eq!(cluster_id(&m, "t"), cluster_id(&m2, "t"));
    }
}
