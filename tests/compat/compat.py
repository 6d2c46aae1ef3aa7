#!/usr/bin/env python3
"""Real-client compatibility: the same etcdctl session against real etcd and
against a 3-node Cairn cluster, outputs normalized and compared line by line
(and against a second Cairn cluster split into regions between every pair
of keys the session uses, so every range, txn, lease and lock crosses
regions; the timing scenarios and the Python client run against it too);
then the JSON gateway with the same HTTP requests to both (gateway.py) and
/metrics parsed beside etcd's (metrics.py); the storage quota and NOSPACE
alarm on fresh 1-node servers of each (quota.py); backups saved from each
and restored into the other (snapshot.py); TLS on both ports, mutual and
server-only, in one session against each (tls.py); users, roles,
permissions and tokens in one etcdctl session against each, then JWTs
and the gateway with auth (auth.py); and the etcdctl session, the timing
scenarios and the Python client again against secured servers of each
(TLS, client certificates, auth on: secured.py);
then timing-dependent etcdctl scenarios (scenarios.py: contending locks,
election leader change, interactive watch progress, lease keep-alive), the
Python `etcd3` client and the `etcd-client` Rust crate's tests, each
against both.

Revisions differ by design (Cairn's are TSO timestamps: increasing, not
dense), so every revision is replaced by its rank among the revisions of
that system's session; IDs, terms and timings are masked. Everything else
must match byte for byte.

Usage: compat.py CAIRN_BINARY   (etcd, etcdctl on PATH)
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


_HANDED_OUT = set()


def free_port():
    """A port free now and not handed out before by this process (the
    kernel may give a closed port again at once: two members on one)."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Procs:
    """Processes started for a test, each in its own process group (so a
    kill takes its children too: Patroni's PostgreSQL), killed newest first
    (clients of a store before the store)."""

    def __init__(self):
        self.procs = []

    def start(self, argv, log, user=None):
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run_in_workdir(prefix, body):
    """Runs `body(work, procs)` (returns ok) in a fresh work directory; then
    stops every process it started and removes the directory (kept, and
    named, with --keep); exits 0 if ok."""
    work = tempfile.mkdtemp(prefix=prefix)
    procs = Procs()
    ok = False
    try:
        ok = body(work, procs)
    finally:
        procs.stop()
        if "--keep" not in sys.argv:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("logs kept in", work)
    sys.exit(0 if ok else 1)


def wait_ready(endpoint, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["etcdctl", "--endpoints", endpoint, "--command-timeout=2s", "put", "__ready", "1"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            subprocess.run(["etcdctl", "--endpoints", endpoint, "del", "__ready"], capture_output=True)
            return
        time.sleep(0.3)
    raise SystemExit(f"endpoint {endpoint} never became ready")


def wait_healthy(endpoint, timeout=60):
    """Ready, without writing anything (revisions stay as they are)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["etcdctl", "--endpoints", endpoint, "--command-timeout=2s", "endpoint", "health"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"endpoint {endpoint} never became ready")


def start_etcd(procs, work, extra=(), scheme="http", name="ref"):
    """One etcd member on free ports (`scheme` https: give the TLS flags in
    `extra`); its client endpoint."""
    c, p = free_port(), free_port()
    client, peer = f"{scheme}://127.0.0.1:{c}", f"{scheme}://127.0.0.1:{p}"
    data = os.path.join(work, "etcd" if name == "ref" else name)
    procs.start(["etcd", "--name", name, "--data-dir", data,
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"{name}={peer}", *extra], os.path.join(work, f"{name}.log"))
    return [f"127.0.0.1:{c}"]


def start_cairn(procs, work, binary, n=3, extra=(), scheme="http", prefix="c"):
    """`n` Cairn members named `prefix0`.. on free ports; their client
    endpoints."""
    ports = [(free_port(), free_port()) for _ in range(n)]
    initial = ",".join(f"{prefix}{i}={scheme}://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    for i, (c, p) in enumerate(ports):
        name = f"{prefix}{i}"
        procs.start([binary, "serve", "--name", name, "--data-dir", os.path.join(work, name),
                     "--listen-client-urls", f"{scheme}://127.0.0.1:{c}",
                     "--listen-peer-urls", f"{scheme}://127.0.0.1:{p}",
                     "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{p}",
                     "--initial-cluster", initial, *extra], os.path.join(work, f"{name}.log"))
    return [f"127.0.0.1:{c}" for c, _ in ports]


def session(endpoints):
    """Runs the etcdctl session; returns the list of (command, output)."""
    ep = ",".join(endpoints)
    out = []
    state = {}

    def ctl(*args, stdin=None, name=None):
        r = subprocess.run(["etcdctl", "--endpoints", ep, *args], input=stdin, capture_output=True, text=True)
        text = (r.stdout + r.stderr).strip()
        out.append((name or " ".join(args), f"exit={r.returncode}\n{text}"))
        return r.stdout

    def rev_of(json_text):
        return json.loads(json_text)["header"]["revision"]

    # etcd's store starts compacted at -1: a compaction at 0 is answered
    # while none has been done, refused once one has.
    ctl("compaction", "0", name="compaction 0 (none done)")
    ctl("put", "foo", "bar")
    state["r_foo2"] = rev_of(ctl("put", "foo2", "baz", "-w", "json"))
    state["r_a"] = rev_of(ctl("put", "a", "1", "-w", "json"))
    ctl("put", "b", "2")
    ctl("put", "foo", "bar2", "--prev-kv")
    ctl("get", "foo")
    ctl("get", "foo", "-w", "json")
    ctl("get", "--prefix", "foo")
    ctl("get", "", "--prefix", "--keys-only")
    ctl("get", "", "--prefix", "--limit=2", "-w", "json")
    ctl("get", "", "--prefix", "--sort-by=VALUE", "--order=DESCEND")
    ctl("get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND")
    ctl("get", "", "--prefix", "--sort-by=CREATE", "--order=ASCEND")
    ctl("get", "", "--prefix", "--sort-by=VERSION", "--order=DESCEND")
    # No order: etcd sorts only the first limit + 1 keys (a, b, foo).
    ctl("get", "", "--prefix", "--sort-by=MODIFY", "--limit=2")
    ctl("get", "a", "--from-key")
    ctl("get", "a", "c")
    ctl("get", "c", "a")
    ctl("get", "a", f"--rev={state['r_a']}", "-w", "json", name="get a --rev=<put a>")
    ctl("get", "foo", f"--rev={state['r_foo2']}", name="get foo --rev=<put foo2>")
    ctl("del", "foo2", "--prev-kv")
    ctl("del", "--prefix", "nothing")
    ctl("get", "--prefix", "foo")
    ctl("txn", "-w", "json", stdin='value("foo") = "bar2"\n\nput foo bar3\nget a\n\nget b\n\n', name="txn (compare true)")
    ctl("txn", stdin='value("foo") = "nope"\n\nput foo never\n\nget foo\nput b 3\n\n', name="txn (compare false)")
    ctl("txn", stdin='mod("a") > "0"\nversion("b") = "2"\n\nget b\n\n\n', name="txn (mod/version)")
    ctl("get", "", "--prefix")
    r_b = rev_of(ctl("get", "b", "-w", "json"))
    ctl("compaction", str(state["r_a"]), name="compaction <put a>")
    ctl("get", "a", f"--rev={state['r_foo2']}", name="get a --rev=<compacted>")
    ctl("get", "a", "--rev=9000000000000000000", name="get a --rev=<future>")
    ctl("compaction", str(state["r_foo2"]), name="compaction <already compacted>")
    ctl("compaction", "0", name="compaction 0 (one done)")
    ctl("get", "b", f"--rev={r_b}", name="get b --rev=<latest>")
    ctl("put", "", "x", name="put <empty key>")
    ctl("del", "--prefix", "")
    ctl("get", "", "--prefix", "--keys-only")
    # Watch: historical replay (--rev) is deterministic; stop it after a moment.
    w_rev = rev_of(ctl("put", "w/1", "a", "-w", "json"))
    ctl("put", "w/2", "b")
    ctl("del", "w/1")
    ctl("put", "w/2", "c")
    ctl("put", "w/3", "d")
    # Ops out of key order, in both regions of w/, a DeleteRange over two
    # keys: a watcher gets the changes in the order the ops ran.
    ctl("txn", stdin='mod("w/2") > "0"\n\nput w/9 t\nput w/1 t\ndel w/2 w/5\nput w/0 t\n\n\n',
        name="txn (ops out of key order)")

    def timed(*args, seconds=2.0, name=None):
        try:
            r = subprocess.run(["etcdctl", "--endpoints", ep, *args], capture_output=True, text=True, timeout=seconds)
            text = r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            text = (e.stdout or b"").decode() + (e.stderr or b"").decode()
        out.append((name or " ".join(args), text.strip()))

    timed("watch", "--prefix", "w/", f"--rev={w_rev}", name="watch --prefix w/ --rev=<put w/1>")
    timed("watch", "--prefix", "w/", f"--rev={w_rev}", "--prev-kv", name="watch --prev-kv --rev=<put w/1>")
    # Leases.
    lease = ctl("lease", "grant", "100").split()[1]
    ctl("put", f"--lease={lease}", "lk", "v", name="put --lease=<L> lk v")
    ctl("lease", "timetolive", lease, "--keys", name="lease timetolive <L> --keys")
    ctl("lease", "list")
    ctl("get", "lk")
    ctl("lease", "revoke", lease, name="lease revoke <L>")
    ctl("get", "lk")
    ctl("lease", "revoke", lease, name="lease revoke <L> (again)")
    ctl("lease", "timetolive", lease, name="lease timetolive <L> (revoked)")
    ctl("lease", "grant", "9000000001")
    ctl("put", "--lease=1234", "x", "y")
    # Locks and elections.
    ctl("lock", "mylock", "echo", "held")
    timed("elect", "myelection", "alice", seconds=2.5)
    r = subprocess.run(["etcdctl", "--endpoints", endpoints[0], "endpoint", "health"], capture_output=True, text=True)
    out.append(("endpoint health", f"exit={r.returncode}\n{(r.stdout + r.stderr).strip()}"))
    return out


REV_FIELDS = re.compile(r'"(revision|create_revision|mod_revision|compact_revision)":(\d+)')


def revision_ranks(transcript, *patterns):
    """Every revision the patterns' last group matches in the transcript,
    mapped to its rank (1 = oldest): revisions compare across systems by
    order, not value."""
    revs = set()
    for _, text in transcript:
        for p in patterns:
            revs.update(int(m.groups()[-1]) for m in re.finditer(p, text))
    return {r: i + 1 for i, r in enumerate(sorted(revs))}


def normalize(transcript):
    rank = revision_ranks(transcript, REV_FIELDS, r"compacted revision (\d+)")
    lines = []
    for cmd, text in transcript:
        # etcdctl's own client-side retry logs carry timestamps and client ids.
        t = "\n".join(l for l in text.splitlines() if not l.startswith('{"level":'))
        t = REV_FIELDS.sub(lambda m: f'"{m.group(1)}":R{rank[int(m.group(2))]}', t)
        t = re.sub(r"compacted revision (\d+)", lambda m: f"compacted revision R{rank.get(int(m.group(1)), '?')}", t)
        t = re.sub(r'"(cluster_id|member_id|raft_term)":\d+', r'"\1":X', t)
        t = re.sub(r"took = [0-9.]+[µmn]?s", "took = T", t)
        t = re.sub(r"127\.0\.0\.1:\d+", "ENDPOINT", t)
        t = re.sub(r"\b(lease |found \d+ leases\n|myelection/|mylock/)[0-9a-f]{1,16}\b", r"\1L", t)
        t = re.sub(r"^[0-9a-f]{16}$", "L", t, flags=re.M)
        t = re.sub(r"remaining\(\d+s\)", "remaining(Ns)", t)
        lines.append(f"$ etcdctl {cmd}\n{t}")
    return lines


def compare_transcripts(ref, got, what):
    """Prints every step where the normalized transcripts differ; True if
    none does and they have the same length."""
    bad = 0
    for r, g in zip(ref, got):
        if r != g:
            bad += 1
            print(f"MISMATCH\n--- etcd\n{r}\n--- cairn\n{g}\n")
    if len(ref) != len(got):
        bad += 1
    print(f"{what}: {len(ref)} steps, {bad} mismatches")
    return bad == 0


# Where the second Cairn cluster is split before anything is written: between
# every pair of keys the etcdctl session, the scenarios and the Python client
# use, so every range, prefix, txn, lease and lock crosses regions.
SPLIT_KEYS = ["a", "b", "c", "foo", "foo2", "foo3", "lk", "m", "myelection/", "mylock/", "n",
              "py/b", "py/c", "scenario-lock/", "scenario-w/", "w/", "w/2", "x", "y"]


def start_split_cairn(procs, work, binary):
    """A second 3-member Cairn cluster split at SPLIT_KEYS; its endpoints."""
    # Its regions are small and cold: with the default merge size they
    # would merge back into one under the session.
    eps = start_cairn(procs, work, binary, prefix="s", extra=("--region-merge-bytes", "0"))
    for e in eps:
        wait_healthy(e)
    r = subprocess.run([binary, "regions", "--endpoints", ",".join(eps), "split", *SPLIT_KEYS],
                       capture_output=True, text=True)
    regions = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("ID ")]
    if r.returncode != 0 or len(regions) < len(SPLIT_KEYS) + 1:
        raise SystemExit(f"split failed: {r.stdout} {r.stderr}")
    print(f"split Cairn cluster: {len(regions)} regions")
    for e in eps:
        wait_ready(e)
    return eps


def cairn_only_checks(cairn_eps):
    ep = ",".join(cairn_eps)
    ok = True
    r = subprocess.run(["etcdctl", "--endpoints", ep, "member", "list"], capture_output=True, text=True)
    members = [l for l in r.stdout.splitlines() if l.strip()]
    if r.returncode != 0 or len(members) != 3 or any(", started, c" not in m for m in members):
        print("member list wrong:", r.stdout, r.stderr)
        ok = False
    r = subprocess.run(["etcdctl", "--endpoints", ep, "endpoint", "status", "-w", "json"], capture_output=True, text=True)
    try:
        st = json.loads(r.stdout)
        leaders = {s["Status"]["leader"] for s in st}
        ids = {s["Status"]["header"]["member_id"] for s in st}
        if len(st) != 3 or len(leaders) != 1 or not leaders <= ids:
            raise ValueError(f"inconsistent status {st}")
    except Exception as e:  # noqa: BLE001
        print("endpoint status wrong:", e, r.stderr)
        ok = False
    print("member list / endpoint status:", "ok" if ok else "FAILED")
    return move_leader(ep) and ok


def leader_of(ep):
    r = subprocess.run(["etcdctl", "--endpoints", ep, "endpoint", "status", "-w", "json"], capture_output=True, text=True)
    st = json.loads(r.stdout)
    return st[0]["Status"]["leader"], [s["Status"]["header"]["member_id"] for s in st]


def move_leader(ep):
    """`etcdctl move-leader` as an operator runs it: etcdctl finds the
    leader among the endpoints and asks it to hand over to the named member;
    every member then reports that one as leader."""
    try:
        leader, ids = leader_of(ep)
        target = next(i for i in ids if i != leader)
        r = subprocess.run(["etcdctl", "--endpoints", ep, "move-leader", f"{target:x}"], capture_output=True, text=True)
        said = f"Leadership transferred from {leader:x} to {target:x}" in r.stdout
        now = None
        for _ in range(50):
            now, _ = leader_of(ep)
            if now == target:
                break
            time.sleep(0.1)
        ok = r.returncode == 0 and said and now == target
        if not ok:
            print("move-leader:", r.stdout, r.stderr, "leader now", now)
    except Exception as e:  # noqa: BLE001
        print("move-leader failed:", e)
        ok = False
    print("etcdctl move-leader:", "ok" if ok else "FAILED")
    return ok


def rust_client(eps, label, extra_env=None):
    env = dict(os.environ, COMPAT_ENDPOINTS=",".join(eps), **(extra_env or {}))
    r = subprocess.run(["cargo", "test", "--quiet", "--manifest-path", os.path.join(HERE, "rust-client", "Cargo.toml"),
                        "--", "--test-threads=1"], env=env)
    print(f"etcd-client crate against {label}:", "ok" if r.returncode == 0 else "FAILED")
    return r.returncode == 0


def script(what, name, *args):
    """Runs the comparison script `name` with `args`; prints and returns
    whether it passed."""
    r = subprocess.run([sys.executable, os.path.join(HERE, name), *args])
    print(f"{what}:", "ok" if r.returncode == 0 else "FAILED")
    return r.returncode == 0


def scenarios(eps, label):
    return script(f"etcdctl coordination scenarios against {label}", "scenarios.py", ",".join(eps))


def python_client(eps, label):
    return script(f"python etcd3 against {label}", "python_etcd3.py", eps[0])


def main():
    run_in_workdir("cairn-compat-", lambda work, procs: everything(os.path.abspath(sys.argv[1]), work, procs))


def everything(binary, work, procs):
    """The whole comparison; True if every part passed."""
    etcd_eps = start_etcd(procs, work)
    cairn_eps = start_cairn(procs, work, binary)
    wait_ready(etcd_eps[0])
    for e in cairn_eps:
        wait_ready(e)
    split_eps = start_split_cairn(procs, work, binary)
    ref = normalize(session(etcd_eps))
    ok = compare_transcripts(ref, normalize(session(cairn_eps)), "etcdctl session")
    ok = compare_transcripts(ref, normalize(session(split_eps)), "etcdctl session, every range across regions") and ok
    ok = cairn_only_checks(cairn_eps) and ok
    ok = script("JSON gateway side by side", "gateway.py", etcd_eps[0], cairn_eps[0]) and ok
    ok = script("/metrics beside etcd's", "metrics.py", etcd_eps[0], cairn_eps[0]) and ok
    ok = script("quota and NOSPACE alarm beside etcd", "quota.py", binary) and ok
    ok = script("backups beside etcd (save, status, restore both ways)", "snapshot.py", binary) and ok
    ok = script("TLS sessions beside etcd (mutual and server-only)", "tls.py", binary) and ok
    ok = script("auth sessions beside etcd (users, roles, permissions, JWT, gateway)", "auth.py", binary) and ok
    ok = script("real clients against secured etcd and Cairn (TLS, certificates, auth)",
                "secured.py", binary, *[a for a in sys.argv[2:] if a == "--no-rust-client"]) and ok
    ok = scenarios(etcd_eps, "etcd") and ok
    ok = scenarios(cairn_eps, "cairn") and ok
    ok = python_client(etcd_eps, "etcd") and ok
    ok = python_client(cairn_eps, "cairn") and ok
    ok = scenarios(split_eps, "cairn split into regions") and ok
    ok = python_client(split_eps, "cairn split into regions") and ok
    if "--no-rust-client" not in sys.argv:
        ok = rust_client(etcd_eps, "etcd") and ok
        ok = rust_client(cairn_eps, "cairn") and ok
    return ok


if __name__ == "__main__":
    main()
