//! `cairn snapshot restore`: a new member's data directory from a backup,
//! as `etcdutl snapshot restore` (etcd 3.4's `etcdctl snapshot restore`)
//! makes one. The file is what `etcdctl snapshot save` wrote, against Cairn
//! or against etcd: etcd's bbolt database with, from a save, its SHA-256
//! appended. Run it once per member with that member's flags, then start
//! each with `cairn serve` and the same flags (`--initial-cluster-state
//! new`): every member starts from the same keys, revisions and leases.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use cairn_store::parse_initial_cluster;
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Restore a snapshot file into a new member's data directory.
    Restore(RestoreArgs),
}

/// etcd's restore flags.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot file (`etcdctl snapshot save` of Cairn or of etcd).
    pub file: PathBuf,
    /// Human-readable name of the member this data directory is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The data directory to create (default: `<name>.cairn`); it must not exist.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The new cluster's members: `name=peer-url,...` (default: just this member).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub initial_advertise_peer_urls: String,
    /// Token of the new cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Restore a file without the checksum `snapshot save` appends (say, a
    /// database file copied from a member's data directory).
    #[arg(long)]
    pub skip_hash_check: bool,
}

pub fn run(cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Restore(a) => restore(a),
    }
}

fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let initial = a
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}={}", a.name, a.initial_advertise_peer_urls));
    let members = parse_initial_cluster(&initial).map_err(anyhow::Error::msg)?;
    if !members.iter().any(|m| m.name == a.name) {
        bail!(
            "member {:?} is not in --initial-cluster {initial:?}",
            a.name
        );
    }
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", a.name)));
    let file = std::fs::File::open(&a.file).with_context(|| format!("opening {:?}", a.file))?;
    check_hash(&file, a.skip_hash_check)?;
    let got = cairn_store::restore(file, &data_dir)?;
    eprintln!(
        "restored snapshot {:?} into {:?} for member {}: {} keys ({} versions), {} leases, revision {}, compacted at {}",
        a.file,
        data_dir,
        a.name,
        got.keys,
        got.versions,
        got.leases,
        got.revisions.current,
        got.revisions.compacted
    );
    Ok(())
}

/// etcd's rule: a file whose size is 32 past a multiple of 512 (bbolt's
/// pages are) ends with the SHA-256 of the rest, which must match — unless
/// told to skip the check.
fn check_hash(file: &std::fs::File, skip: bool) -> anyhow::Result<()> {
    const SHA: u64 = 32;
    if skip {
        return Ok(());
    }
    let len = file.metadata()?.len();
    if len % 512 != SHA {
        bail!("snapshot missing hash but --skip-hash-check=false");
    }
    let mut body = file.take(len - SHA);
    let mut hash = Sha256::new();
    std::io::copy(&mut body, &mut hash)?;
    let mut want = [0u8; SHA as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut want, len - SHA)?;
    if hash.finalize().as_slice() != want {
        bail!("snapshot checksum mismatch: the file is damaged or incomplete");
    }
    Ok(())
}
