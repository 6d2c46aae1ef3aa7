#!/usr/bin/env python3
"""Backups beside etcd, both ways: the same writes (puts, an overwrite, a
delete, a two-key txn, a leased key, a compaction) go to a fresh etcd and a
fresh 3-node Cairn; `etcdctl snapshot save` takes a backup of each, then

- `etcdctl snapshot status` reads Cairn's backup (it is a bbolt file);
- etcd restores Cairn's backup (`etcdctl snapshot restore`, then `etcd`)
  and serves exactly Cairn's keys, revisions and leases;
- `cairn snapshot restore` makes 3 new members from etcd's backup, and the
  new cluster serves exactly etcd's keys, revisions, leases and compaction;
- the same from Cairn's own backup, and a write after it continues above
  the restored revision;
- a damaged backup is refused and leaves no data directory;
- a secured store's backup (users, roles, permissions, auth on) restores
  secured, etcd's into Cairn and Cairn's into etcd: root, a limited user
  and no user see the same as before.

Usage: snapshot.py CAIRN_BINARY   (etcd, etcdctl on PATH)
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compat import free_port, run_in_workdir  # noqa: E402
from compat import wait_healthy as wait_ready  # noqa: E402


def ctl(ep, *args, stdin=None, check=True):
    r = subprocess.run(["etcdctl", "--endpoints", ep, *args], input=stdin, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"etcdctl {' '.join(args)} against {ep} failed: {r.stderr}")
    return r


def start_etcd(procs, work, name, restore_from=None, ready=wait_ready):
    c, p = free_port(), free_port()
    peer = f"http://127.0.0.1:{p}"
    data = os.path.join(work, name)
    if restore_from:
        subprocess.run(["etcdctl", "snapshot", "restore", restore_from, "--data-dir", data, "--name", name,
                        "--initial-cluster", f"{name}={peer}", "--initial-advertise-peer-urls", peer],
                       check=True, capture_output=True)
    procs.start(["etcd", "--name", name, "--data-dir", data,
                 "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"{name}={peer}"], os.path.join(work, f"{name}.log"))
    ep = f"127.0.0.1:{c}"
    ready(ep)
    return ep


def start_cairn(procs, work, binary, prefix, restore_from=None, n=3, ready=wait_ready):
    ports = [(free_port(), free_port()) for _ in range(n)]
    names = [f"{prefix}{i}" for i in range(n)]
    initial = ",".join(f"{m}=http://127.0.0.1:{p}" for m, (_, p) in zip(names, ports))
    for m, (c, p) in zip(names, ports):
        peer = f"http://127.0.0.1:{p}"
        flags = ["--name", m, "--data-dir", os.path.join(work, m), "--initial-cluster", initial,
                 "--initial-advertise-peer-urls", peer]
        if restore_from:
            r = subprocess.run([binary, "snapshot", "restore", restore_from, *flags], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"cairn snapshot restore failed: {r.stderr}")
        procs.start([binary, "serve", *flags, "--listen-client-urls", f"http://127.0.0.1:{c}",
                     "--listen-peer-urls", peer], os.path.join(work, f"{m}.log"))
    eps = [f"127.0.0.1:{c}" for c, _ in ports]
    for ep in eps:
        ready(ep)
    return eps


def write_history(ep):
    """The same writes on either store; returns the compaction revision."""
    for k, v in [("k1", "v1"), ("k2", "v2"), ("k3", "v3"), ("k1", "v1b")]:
        ctl(ep, "put", k, v)
    ctl(ep, "del", "k2")
    ctl(ep, "txn", stdin="\nput t1 a\nput t2 b\n\n\n")
    lease = ctl(ep, "lease", "grant", "600").stdout.split()[1]
    ctl(ep, "put", "leased", "x", "--lease", lease)
    at = revision(ep, "k3")
    ctl(ep, "compaction", str(at))
    ctl(ep, "put", "after", "compaction")
    return at


def revision(ep, key):
    return json.loads(ctl(ep, "get", key, "-w", "json").stdout)["kvs"][0]["mod_revision"]


def dump(ep):
    """Every key with its revisions and lease, the current revision, the
    leases with their granted TTLs."""
    d = json.loads(ctl(ep, "get", "", "--from-key", "-w", "json").stdout)
    kvs = [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")).decode(),
            kv["create_revision"], kv["mod_revision"], kv.get("version"), kv.get("lease", 0))
           for kv in d.get("kvs", [])]
    leases = []
    for line in ctl(ep, "lease", "list").stdout.splitlines()[1:]:
        ttl = json.loads(ctl(ep, "lease", "timetolive", line.strip(), "-w", "json").stdout)
        leases.append((ttl["id"], ttl["granted-ttl"]))
    return {"revision": d["header"]["revision"], "kvs": kvs, "leases": sorted(leases)}


def compacted_at(ep, at):
    """Reads just below the compaction fail, at it succeed."""
    below = ctl(ep, "get", "k1", f"--rev={at - 1}", check=False)
    ok = ctl(ep, "get", "k1", f"--rev={at}", check=False)
    return ("compacted" in below.stderr, ok.returncode == 0)


def save(ep, path):
    ctl(ep, "snapshot", "save", path)
    return path


ROOT, ALICE = ["--user", "root:rootpw"], ["--user", "alice:alicepw"]


def secure(ep):
    """root, alice (READWRITE on a/, READ on b) and auth on; a/x and b set."""
    ctl(ep, "put", "a/x", "1")
    ctl(ep, "put", "b", "2")
    for args in (["user", "add", "root", "--new-user-password=rootpw", "--interactive=false"],
                 ["user", "add", "alice", "--new-user-password=alicepw", "--interactive=false"],
                 ["role", "add", "a"],
                 ["role", "grant-permission", "a", "readwrite", "a/", "--prefix=true"],
                 ["role", "grant-permission", "a", "read", "b"],
                 ["user", "grant-role", "alice", "a"],
                 ["auth", "enable"]):
        ctl(ep, *args)


def ready_as_root(ep, timeout=60):
    """Serving root's reads (`endpoint health` has no credentials)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ctl(ep, "--command-timeout=2s", "get", "a/x", *ROOT, check=False).returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"endpoint {ep} never served root")


def auth_view(ep):
    """What a client sees of the auth store: as root, as alice, as nobody."""
    def out(*args):
        r = ctl(ep, *args, check=False)
        lines = [l for l in (r.stdout + r.stderr).splitlines() if not l.startswith('{"level":')]
        return f"exit={r.returncode} " + " | ".join(lines)
    return [out("user", "list", *ROOT), out("role", "get", "a", *ROOT), out("user", "get", "alice", *ROOT),
            out("get", "a/x", "--print-value-only", *ALICE), out("put", "a/y", "3", *ALICE),
            out("get", "b", "--print-value-only", *ALICE), out("put", "b", "4", *ALICE),
            out("get", "a/x"), out("get", "a/x", "--user", "alice:wrong")]


def auth_both_ways(binary, work, procs):
    """A secured store's backup restores secured, both ways: the same
    users, roles, permissions and auth on."""
    etcd = start_etcd(procs, work, "aref")
    cairn = start_cairn(procs, work, binary, "ac")
    secure(etcd)
    secure(cairn[0])
    etcd_view, cairn_view = auth_view(etcd), auth_view(cairn[1])
    ok = check("secured etcd and Cairn look alike before the backups", cairn_view, etcd_view)
    etcd_file, cairn_file = os.path.join(work, "etcd-auth.db"), os.path.join(work, "cairn-auth.db")
    ctl(etcd, "snapshot", "save", etcd_file, *ROOT)
    ctl(cairn[2], "snapshot", "save", cairn_file, *ROOT)
    from_etcd = start_cairn(procs, work, binary, "ae", restore_from=etcd_file, ready=ready_as_root)
    ok = check("Cairn restored from a secured etcd's backup: same users, roles, permissions, auth on",
               auth_view(from_etcd[1]), etcd_view) and ok
    from_cairn = start_etcd(procs, work, "etcd-from-secured-cairn", restore_from=cairn_file, ready=ready_as_root)
    ok = check("etcd restored from a secured Cairn's backup: the same",
               auth_view(from_cairn), cairn_view) and ok
    return ok


def check(what, got, want):
    if got == want:
        print(f"  ok: {what}")
        return True
    print(f"  MISMATCH: {what}\n    want {want}\n    got  {got}")
    return False


def main():
    binary = os.path.abspath(sys.argv[1])
    run_in_workdir("cairn-snapshot-",
                   lambda work, procs: both_ways(binary, work, procs) & auth_both_ways(binary, work, procs))


def both_ways(binary, work, procs):
    """Every check above; True if all passed."""
    ok = True
    etcd = start_etcd(procs, work, "ref")
    cairn = start_cairn(procs, work, binary, "c")
    etcd_at, cairn_at = write_history(etcd), write_history(cairn[0])
    etcd_before, cairn_before = dump(etcd), dump(cairn[0])
    etcd_file = save(etcd, os.path.join(work, "etcd.db"))
    # From a follower too: any member can be asked.
    cairn_file = save(cairn[1], os.path.join(work, "cairn.db"))

    status = json.loads(subprocess.run(["etcdctl", "snapshot", "status", cairn_file, "-w", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    ok = check("etcdctl snapshot status reads Cairn's backup at its revision",
               (status["revision"], status["totalKey"] > 0), (cairn_before["revision"], True)) and ok

    from_cairn = start_etcd(procs, work, "etcd-from-cairn", restore_from=cairn_file)
    ok = check("etcd restored from Cairn's backup serves Cairn's keys, revisions, leases",
               dump(from_cairn), cairn_before) and ok

    from_etcd = start_cairn(procs, work, binary, "e", restore_from=etcd_file)
    ok = check("Cairn restored from etcd's backup serves etcd's keys, revisions, leases",
               dump(from_etcd[2]), etcd_before) and ok
    ok = check("... and etcd's compaction", compacted_at(from_etcd[0], etcd_at), compacted_at(etcd, etcd_at)) and ok

    again = start_cairn(procs, work, binary, "r", restore_from=cairn_file)
    ok = check("Cairn restored from its own backup serves the same", dump(again[1]), cairn_before) and ok
    ok = check("... with the same compaction", compacted_at(again[0], cairn_at), (True, True)) and ok
    ctl(again[0], "put", "new", "write")
    ok = check("... and a new write lands above the restored revision",
               revision(again[2], "new") > cairn_before["revision"], True) and ok

    damaged = os.path.join(work, "damaged.db")
    shutil.copy(cairn_file, damaged)
    with open(damaged, "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0xFF]))
    r = subprocess.run([binary, "snapshot", "restore", damaged, "--name", "d0",
                        "--data-dir", os.path.join(work, "d0")], capture_output=True, text=True)
    ok = check("a damaged backup is refused, no data directory made",
               (r.returncode != 0, "checksum" in r.stderr, os.path.exists(os.path.join(work, "d0"))),
               (True, True, False)) and ok
    return ok


if __name__ == "__main__":
    main()
