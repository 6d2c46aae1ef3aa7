//! A cluster of `cairn serve` processes, for tests that kill and pause them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{many_regions, secured};

/// N `cairn serve` processes on free loopback ports.
pub struct ProcessCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    initial: String,
    /// Extra `cairn serve` arguments for every member.
    extra_args: Vec<String>,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    starts: u32,
}

/// `n` distinct free loopback ports: every listener is held until all are
/// chosen, so no two members of one cluster are handed the same port.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

impl ProcessCluster {
    /// Starts `n` members of a new cluster using binary `bin`.
    pub fn start(bin: &Path, n: usize) -> Self {
        Self::start_with(bin, n, &[])
    }

    /// Starts `n` members passing `extra_args` to every `cairn serve`
    /// (e.g. `--snapshot-count 100`). Regions never merge by themselves
    /// (`--region-merge-bytes 0`) unless `extra_args` says otherwise: the
    /// tests split by hand, and their small, cold regions would otherwise
    /// merge back under them. In many-regions mode (`many_regions`) a
    /// cluster whose `extra_args` set no `--region-split-bytes` splits at
    /// a few KiB, and its keyspace is cut as an in-process cluster's is
    /// before this returns.
    pub fn start_with(bin: &Path, n: usize, extra_args: &[String]) -> Self {
        let mut extra_args = extra_args.to_vec();
        if !extra_args
            .iter()
            .any(|a| a.starts_with("--region-merge-bytes"))
        {
            extra_args.extend(["--region-merge-bytes".to_string(), "0".to_string()]);
        }
        let cut = many_regions::is_on()
            && !extra_args
                .iter()
                .any(|a| a.starts_with("--region-split-bytes"));
        extra_args.extend(many_regions::serve_args(&extra_args));
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("p{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
                starts: 0,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| {
                format!(
                    "{}={}",
                    m.name,
                    secured::url(&format!("127.0.0.1:{}", m.peer_port))
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut c = ProcessCluster {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir().expect("tempdir"),
            initial,
            extra_args,
            members,
        };
        for i in 0..n {
            c.spawn(i, "new", &[]);
        }
        // Sync callers (some inside a runtime): a thread of its own.
        let endpoints = c.endpoints();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    secured::enable_auth(&endpoints[0]).await;
                    if cut {
                        many_regions::cut_processes(&endpoints).await;
                    }
                })
        })
        .join()
        .expect("enabling auth on the secured process cluster, or cutting its keyspace");
        c
    }

    fn spawn(&mut self, i: usize, state: &str, env: &[(&str, &str)]) {
        let dir = self.dir.path().to_path_buf();
        let m = &mut self.members[i];
        m.starts += 1;
        let log = File::create(dir.join(format!("{}.{}.log", m.name, m.starts))).expect("log file");
        let child = Command::new(&self.bin)
            .arg("serve")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(dir.join(&m.name))
            .args([
                "--listen-client-urls",
                &secured::url(&format!("127.0.0.1:{}", m.client_port)),
            ])
            .args([
                "--listen-peer-urls",
                &secured::url(&format!("127.0.0.1:{}", m.peer_port)),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &secured::url(&format!("127.0.0.1:{}", m.peer_port)),
            ])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", state])
            .args(secured::serve_args())
            .args(&self.extra_args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cairn serve");
        m.child = Some(child);
    }

    /// Member `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// `127.0.0.1:port` of member `i`'s client endpoint.
    pub fn client_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_addr(i))
            .collect()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member that reports itself as the data region's leader (asked
    /// with Maintenance.Status), skipping `skip`; `None` if none does now.
    pub async fn leader(&self, skip: &[usize]) -> Option<usize> {
        for i in (0..self.len()).filter(|i| !skip.contains(i)) {
            if let Ok(s) = self.status(i).await {
                if s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits (up to `within`) until member `i` answers Status; false if it
    /// did not.
    pub async fn wait_serving(&self, i: usize, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.status(i).await.is_ok() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// The index of the running member whose ID is `id`.
    pub async fn member_index(&self, id: u64) -> Option<usize> {
        for i in 0..self.len() {
            if let Ok(s) = self.status(i).await {
                if s.header.is_some_and(|h| h.member_id == id) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Member `i`'s answer to Maintenance.Status (2 s to connect and answer).
    async fn status(&self, i: usize) -> Result<cairn_api::etcdserverpb::StatusResponse, String> {
        use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
        use cairn_api::etcdserverpb::StatusRequest;
        let ep = secured::endpoint(&self.client_addr(i))
            .connect_timeout(std::time::Duration::from_millis(500))
            .timeout(std::time::Duration::from_secs(2));
        let ch = secured::connect(ep)
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| format!("status: {e}"))
    }

    /// One line per member: its process state (from `/proc`: R running,
    /// S sleeping, T stopped, Z exited) and what Status answers, for
    /// failure reports that must say why no leader was found.
    pub async fn describe(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let process = match self.pid(i) {
                None => "not running".to_string(),
                Some(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let state = s.rsplit_once(") ")?.1.split(' ').next()?.to_string();
                        Some(format!("pid {pid} state {state}"))
                    })
                    .unwrap_or_else(|| format!("pid {pid} gone")),
            };
            let status = match self.status(i).await {
                Ok(s) => format!(
                    "leader {:x}, self {:x}, term {}, applied {}",
                    s.leader,
                    s.header.map_or(0, |h| h.member_id),
                    s.raft_term,
                    s.raft_applied_index
                ),
                Err(e) => e,
            };
            out += &format!(
                "member {i} ({}, client {}): {process}; {status}\n",
                self.members[i].name,
                self.client_addr(i)
            );
        }
        out
    }

    /// The process ID of member `i`, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The whole log of member `i`'s `run`th run (1 is its first start;
    /// `logs()` keeps only tails).
    pub fn run_log(&self, i: usize, run: u32) -> String {
        let m = &self.members[i];
        let path = self.dir.path().join(format!("{}.{run}.log", m.name));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to member `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(pid) = self.pid(i) {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Restarts a killed member `i` on its data dir.
    pub fn restart(&mut self, i: usize) {
        self.restart_with_env(i, &[]);
    }

    /// Restarts a killed member `i` with extra environment variables (e.g.
    /// `FAILPOINTS` for a build with crash points).
    pub fn restart_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        assert!(
            self.members[i].child.is_none(),
            "restart of a running member"
        );
        self.spawn(i, "existing", env);
    }

    /// True (and the process reaped) if member `i` has exited by itself —
    /// e.g. died at an armed crash point.
    pub fn reap_exited(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        let exited = m
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited {
            m.child = None;
        }
        exited
    }

    /// Waits up to `within` for member `i` to exit by itself (reaped);
    /// fails saying `never` (and every member's log tail) if it does not.
    pub async fn wait_exited(&mut self, i: usize, within: std::time::Duration, never: &str) {
        let deadline = std::time::Instant::now() + within;
        while !self.reap_exited(i) {
            assert!(
                std::time::Instant::now() < deadline,
                "{never}\n{}",
                self.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Copies the stderr of every run of every member into directory `to`
    /// (created), so a long run's failure can be read after the cluster's
    /// directory is gone.
    pub fn copy_logs(&self, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(self.dir.path())? {
            let p = e?.path();
            if let (Some(name), Some("log")) =
                (p.file_name(), p.extension().and_then(|e| e.to_str()))
            {
                std::fs::copy(&p, to.join(name))?;
            }
        }
        Ok(())
    }

    /// The collected stderr of every run of every member (for failure reports).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            let mut files: Vec<_> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out += &format!(
                    "== {}\n{}\n",
                    f.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        out
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.signal(i, "CONT");
            self.kill(i);
        }
    }
}
