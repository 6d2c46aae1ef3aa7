//! The sleepers workload and its checker: keys each in a region of its
//! own, watched, and touched only now and then, so the
//! region hibernates between touches (`cairn_store` `node::hibernate`:
//! no Raft ticks, members' beats in their place) while the nemesis
//! crashes, pauses and cuts members off.
//!
//! Keys are `zs/NN`; the nemesis splits at each before the faults start.
//! One client per key waits 6–12 s (longer than a region takes to fall
//! asleep, about 4 s), puts the next value of a counter, and reads the key back
//! linearizably. Checked:
//! - **No stale read, no lost write:** a read returns the value of the
//!   last acknowledged put (or the last value read), or of a put whose
//!   outcome is unknown (a fault cut the answer; it may take effect any
//!   time after it was sent) — never a value overwritten since.
//! - **A sleeping region whose leader dies elects another:** the nemesis
//!   holds one member down at a time, for longer than [`WRITE_WITHIN`], so
//!   a majority is always up; each touch tries one member after another
//!   until a put is acknowledged, and must be within [`WRITE_WITHIN`].
//!   A region whose followers sleep on under a dead leader (nothing woke
//!   them) waits for the leader's restart, and fails here.
//! - **Sleeping regions come back:** once the nemesis has healed every
//!   fault and the regions have had time to fall asleep again, each key
//!   takes a put and a read within [`RECOVER`].
//! - **Regions did sleep:** just before that, the members' `/metrics`
//!   must count at least one replica asleep (`cairn_region_asleep_count`),
//!   or the run proved nothing about hibernation. (Skipped when no member
//!   answers over plain HTTP: a secured cluster.)
//! - **The watch over the keys keeps etcd's guarantees** (`watch_check`,
//!   against [`Outcome::history`]): a watcher follows `zs/` from revision
//!   1, so the regions are watched idle regions. They sleep all the same,
//!   closed beside the log (`node::side_closes`); a close that promised
//!   too much shows as an event at or below a progress notification, or
//!   as an event out of order.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::{PutRequest, RangeRequest};
use cairn_check::{Operation, Request, Status};
use tonic::transport::Channel;

/// The keys' prefix.
pub const PREFIX: &str = "zs/";
/// The nemesis picks among this many sleepers' keys.
pub const KEYS_AT_MOST: usize = 6;
const CALL: Duration = Duration::from_secs(10);
/// How long one put through one member may take.
const ATTEMPT: Duration = Duration::from_secs(2);
/// How long a touch may take to get a put acknowledged, through any member.
const WRITE_WITHIN: Duration = Duration::from_secs(10);
/// How long a sleeping region may take to serve again after the faults.
const RECOVER: Duration = Duration::from_secs(15);
/// How long the regions are left alone after the faults, to fall asleep.
const SETTLE: Duration = Duration::from_secs(6);

/// A sleeper's key.
pub fn key(i: usize) -> String {
    format!("{PREFIX}{i:02}")
}

/// What the sleepers saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub puts: usize,
    pub unknown: usize,
    pub reads: usize,
    /// The slowest touch to get a put acknowledged.
    pub slowest: Duration,
    /// Replicas asleep, summed over the members that answered, after the
    /// faults (None: no member answered).
    pub asleep: Option<u64>,
    /// Reads that returned an overwritten value, touches that got no put
    /// acknowledged in time, keys that did not serve again after the
    /// faults, and a run where no region slept, described.
    pub bad: Vec<String>,
    /// Every put, as the history format records it (values are unique
    /// per key): what the watch over the sleepers' keys is checked
    /// against.
    pub history: Vec<Operation>,
    /// Events the watch over the sleepers' keys delivered.
    pub watched: usize,
}

impl Outcome {
    /// A violation, if any.
    pub fn check(&self) -> Result<(), String> {
        // Each, up to 20: their times place them among the faults.
        match self.bad.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} violations; first: {first}{}",
                self.bad.len(),
                self.bad[1..]
                    .iter()
                    .take(19)
                    .map(|b| format!("\n  then: {b}"))
                    .collect::<String>()
            )),
        }
    }

    /// A human summary line.
    pub fn summary(&self) -> String {
        format!(
            "sleepers: {} puts ({} unknown), {} reads, slowest touch {:?}, replicas asleep after the faults {}, {} events watched",
            self.puts,
            self.unknown,
            self.reads,
            self.slowest,
            self.asleep.map_or("unknown".into(), |n| n.to_string()),
            self.watched
        )
    }
}

/// One key's client: what it knows of the key.
struct Sleeper {
    key: String,
    /// The key's value as last known (acknowledged or read), and the
    /// values of puts whose outcome is unknown and that were not read.
    acked: u64,
    maybe: Vec<u64>,
    next: u64,
    endpoint: usize,
    /// Which sleeper (the history's client).
    index: usize,
    /// When the run began (the history's clock).
    epoch: Instant,
    /// Its puts so far.
    history: Vec<Operation>,
}

enum Put {
    Acked,
    /// No answer in time, or an error: why, as the client saw it.
    Unknown(String),
}

impl Sleeper {
    fn client(&mut self, endpoints: &[String]) -> KvClient<Channel> {
        self.endpoint += 1;
        KvClient::new(crate::secured::channel(
            &endpoints[self.endpoint % endpoints.len()],
        ))
    }

    async fn put(&mut self, endpoints: &[String], timeout: Duration) -> Put {
        self.next += 1;
        let value = self.next;
        let mut kv = self.client(endpoints);
        let put = kv.put(PutRequest {
            key: self.key.as_bytes().to_vec(),
            value: value.to_string().into_bytes(),
            ..Default::default()
        });
        let call = self.epoch.elapsed().as_nanos() as u64;
        let answer = tokio::time::timeout(timeout, put).await;
        let mut op = Operation {
            id: ((self.index as u64 + 1) << 32) | value,
            client: 1_000_000 + self.index as u64,
            call,
            ret: None,
            op: Request::Put {
                key: self.key.clone(),
                value: value.to_string(),
            },
            result: cairn_check::Outcome::of(Status::Unknown),
        };
        let why = match answer {
            Ok(Ok(r)) => {
                op.ret = Some(self.epoch.elapsed().as_nanos() as u64);
                op.result = cairn_check::Outcome {
                    revision: r.into_inner().header.map(|h| h.revision),
                    ..cairn_check::Outcome::of(Status::Ok)
                };
                self.history.push(op);
                self.acked = value;
                return Put::Acked;
            }
            Ok(Err(e)) => format!("{:?}: {}", e.code(), e.message()),
            Err(_) => format!("no answer in {timeout:?}"),
        };
        self.history.push(op);
        self.maybe.push(value);
        Put::Unknown(why)
    }

    /// Reads the key linearizably; a description of a stale answer, or
    /// None (also when the read failed).
    async fn read(&mut self, endpoints: &[String]) -> Option<Result<(), String>> {
        let mut kv = self.client(endpoints);
        let get = kv.range(RangeRequest {
            key: self.key.as_bytes().to_vec(),
            ..Default::default()
        });
        let r = match tokio::time::timeout(CALL, get).await {
            Ok(Ok(r)) => r.into_inner(),
            _ => return None,
        };
        let seen: u64 = r
            .kvs
            .first()
            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
            .unwrap_or(0);
        if seen == self.acked {
            return Some(Ok(()));
        }
        if self.maybe.contains(&seen) {
            // An unknown put took effect: its value is the known state now.
            self.acked = seen;
            self.maybe.retain(|v| *v != seen);
            return Some(Ok(()));
        }
        Some(Err(format!(
            "{} read {seen}, after the put of {} was acknowledged (unknown since: {:?})",
            self.key, self.acked, self.maybe
        )))
    }
}

/// Runs `n` sleepers against `endpoints` until `deadline`, then checks
/// that every key serves again (see the module essay).
/// `epoch`: when the run began.
pub async fn run(
    endpoints: &[String],
    n: usize,
    seed: u64,
    epoch: Instant,
    deadline: Instant,
) -> Outcome {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let endpoints = endpoints.to_vec();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ ((i as u64 + 1) * 0x51ee_9e55));
                let mut s = Sleeper {
                    key: key(i),
                    acked: 0,
                    maybe: Vec::new(),
                    next: 0,
                    endpoint: i,
                    index: i,
                    epoch,
                    history: Vec::new(),
                };
                let mut out = Outcome::default();
                loop {
                    let nap = Duration::from_millis(rng.u64(6_000..12_000));
                    if Instant::now() + nap >= deadline {
                        break;
                    }
                    tokio::time::sleep(nap).await;
                    s.once(endpoints.as_slice(), epoch, &mut out).await;
                }
                // The faults are healed by now: let the region fall asleep,
                // then it must serve again.
                tokio::time::sleep(deadline.saturating_duration_since(Instant::now()) + SETTLE)
                    .await;
                let until = Instant::now() + RECOVER;
                let served = loop {
                    if let Put::Acked = s.put(&endpoints, CALL).await {
                        if let Some(read) = s.read(&endpoints).await {
                            if let Err(e) = read {
                                out.bad.push(e);
                            }
                            break true;
                        }
                    }
                    if Instant::now() >= until {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                if !served {
                    out.bad.push(format!(
                        "{} took no put and read for {RECOVER:?} after the faults were healed",
                        s.key
                    ));
                }
                out.history = s.history;
                out
            })
        })
        .collect();
    // Just before the keys are touched again after the faults: the regions
    // had SETTLE to fall asleep.
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now()) + SETTLE).await;
    let mut asleep = None;
    for e in endpoints {
        if let Some(n) = asleep_count(e).await {
            *asleep.get_or_insert(0) += n;
        }
    }
    let mut all = Outcome {
        asleep,
        ..Default::default()
    };
    if asleep == Some(0) {
        all.bad.push(
            "no region replica was asleep after the faults: hibernation never happened".into(),
        );
    }
    for t in tasks {
        let Ok(o) = t.await else { continue };
        all.puts += o.puts;
        all.unknown += o.unknown;
        all.reads += o.reads;
        all.slowest = all.slowest.max(o.slowest);
        all.bad.extend(o.bad);
        all.history.extend(o.history);
    }
    all.history.sort_by_key(|o| (o.call, o.id));
    all
}

/// `cairn_region_asleep_count` from the `/metrics` of the member at
/// `addr` (plain HTTP on the client port), if it answers.
async fn asleep_count(addr: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = addr.trim_start_matches("http://");
    let call = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let get = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(get.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        String::from_utf8_lossy(&body).lines().find_map(|l| {
            l.strip_prefix("cairn_region_asleep_count ")?
                .trim()
                .parse()
                .ok()
        })
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .ok()?
}

impl Sleeper {
    /// One touch: puts through one member after another until one is
    /// acknowledged (within [`WRITE_WITHIN`]), then a read.
    /// A failed touch says when it began (ms since `epoch`, as the
    /// nemesis logs its faults) and what each attempt got.
    async fn once(&mut self, endpoints: &[String], epoch: Instant, out: &mut Outcome) {
        let started = Instant::now();
        let mut attempts = Vec::new();
        loop {
            out.puts += 1;
            let member = (self.endpoint + 1) % endpoints.len();
            let at = started.elapsed().as_millis();
            match self.put(endpoints, ATTEMPT).await {
                Put::Acked => {
                    out.slowest = out.slowest.max(started.elapsed());
                    break;
                }
                Put::Unknown(why) => {
                    out.unknown += 1;
                    attempts.push(format!("+{at} ms node {member}: {why}"));
                }
            }
            if started.elapsed() >= WRITE_WITHIN {
                out.bad.push(format!(
                    "{} took no put for {WRITE_WITHIN:?}, one member down at most (touch at {} ms; {})",
                    self.key,
                    started.duration_since(epoch).as_millis(),
                    attempts.join("; ")
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(read) = self.read(endpoints).await {
            out.reads += 1;
            if let Err(e) = read {
                out.bad.push(e);
            }
        }
    }
}
