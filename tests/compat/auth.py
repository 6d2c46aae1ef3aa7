#!/usr/bin/env python3
"""Authentication and role-based access beside etcd: the same etcdctl
session against a real etcd and a 3-node Cairn, compared line by line
after normalizing (revisions by rank, IDs and timings masked).

The session manages users, roles and permissions, enables auth, then runs
allowed and denied operations as different users: reads and writes inside
and outside granted ranges and prefixes, txns whose compares or branches
touch other keys, watch, leases, locks, elections, maintenance and cluster
calls, a wrong password, no credentials; a permission revoked and a role
taken away take effect at once; a password change; root's protections;
auth disable.

Then, on a fresh etcd and a fresh 3-node Cairn both started with
`--auth-token jwt,...,sign-method=RS256` (an RSA key pair made with
openssl): a shorter session with JWTs, and the JSON gateway with auth —
`/v3/auth/authenticate`, then requests with and without the token in
`Authorization`, allowed and denied.

Usage: auth.py CAIRN_BINARY   (etcd, etcdctl, openssl on PATH)
"""
import base64
import http.client
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compat import (compare_transcripts, normalize, run_in_workdir, start_cairn, start_etcd,  # noqa: E402
                    wait_healthy)

ROOT = ["--user", "root:rootpw"]
ALICE = ["--user", "alice:alicepw"]
BOB = ["--user", "bob:bobpw"]


def session(endpoints):
    ep = ",".join(endpoints)
    out = []

    def ctl(*args, stdin=None, name=None, timeout=None, one=False, exit_only=False):
        # `one`: per-endpoint commands ask the first member only (etcd runs one).
        argv = ["etcdctl", "--endpoints", endpoints[0] if one else ep, "--dial-timeout=2s",
                "--command-timeout=5s", *args]
        try:
            r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
            text = f"exit={r.returncode}\n{(r.stdout + r.stderr).strip()}"
        except subprocess.TimeoutExpired as e:
            text = "timed out\n" + ((e.stdout or b"").decode() + (e.stderr or b"").decode()).strip()
        if exit_only:  # members differ (names, IDs, how many): only whether it was allowed
            text = text.splitlines()[0]
        # An election key names its lease.
        text = re.sub(r"\bel/[0-9a-f]{1,16}\b", "el/L", text)
        out.append((name or " ".join(args), text))

    # Management before auth is on.
    ctl("put", "foo/a", "1")
    ctl("put", "bar", "2")
    ctl("auth", "enable", name="auth enable (no root user)")
    ctl("user", "add", "root", "--new-user-password=rootpw", "--interactive=false")
    ctl("user", "add", "root", "--new-user-password=x", "--interactive=false", name="user add root (again)")
    ctl("user", "add", "alice", "--new-user-password=alicepw", "--interactive=false")
    ctl("user", "add", "bob", "--new-user-password=bobpw", "--interactive=false")
    ctl("user", "add", "", "--new-user-password=x", "--interactive=false", name="user add <empty>")
    ctl("role", "add", "reader")
    ctl("role", "add", "writer")
    ctl("role", "add", "reader", name="role add reader (again)")
    ctl("role", "grant-permission", "reader", "read", "foo/", "--prefix=true")
    ctl("role", "grant-permission", "writer", "readwrite", "foo/b")
    ctl("role", "grant-permission", "writer", "write", "w1", "w5")
    ctl("role", "grant-permission", "writer", "readwrite", "lk/", "--prefix=true")
    ctl("role", "grant-permission", "writer", "readwrite", "el/", "--prefix=true")
    ctl("role", "grant-permission", "nosuch", "read", "x", name="role grant-permission <no such role>")
    ctl("role", "get", "reader")
    ctl("role", "get", "writer")
    ctl("role", "list")
    ctl("user", "grant-role", "alice", "reader")
    ctl("user", "grant-role", "alice", "writer")
    ctl("user", "grant-role", "alice", "nosuch", name="user grant-role alice <no such role>")
    ctl("user", "grant-role", "nobody", "reader", name="user grant-role <no such user> reader")
    ctl("user", "get", "alice")
    ctl("user", "get", "nobody")
    ctl("user", "list")
    ctl("role", "get", "root", name="role get root (before auth enable)")
    # etcdctl's `auth enable` adds the root role and grants it to root first.
    ctl("auth", "enable")
    ctl("auth", "enable", *ROOT, name="auth enable (again)")
    ctl("role", "get", "root", *ROOT)
    ctl("user", "get", "root", *ROOT)
    ctl("role", "list", *ROOT)
    # Who may do what.
    ctl("get", "foo/a", name="get foo/a (no user)")
    ctl("get", "foo/a", "--user", "alice:wrong", name="get foo/a (wrong password)")
    ctl("get", "foo/a", "--user", "nobody:x", name="get foo/a (no such user)")
    ctl("get", "foo/a", *ALICE, name="alice: get foo/a")
    ctl("get", "foo/", "--prefix", *ALICE, name="alice: get --prefix foo/")
    ctl("get", "", "--prefix", *ALICE, name="alice: get --prefix <all>")
    ctl("get", "bar", *ALICE, name="alice: get bar")
    ctl("put", "foo/a", "x", *ALICE, name="alice: put foo/a")
    ctl("put", "foo/b", "x", *ALICE, name="alice: put foo/b")
    ctl("put", "foo/b", "y", "--prev-kv", *ALICE, name="alice: put foo/b --prev-kv")
    ctl("put", "w3", "x", *ALICE, name="alice: put w3 (write-only range)")
    ctl("put", "w3", "y", "--prev-kv", *ALICE, name="alice: put w3 --prev-kv (no read)")
    ctl("get", "w3", *ALICE, name="alice: get w3 (no read)")
    ctl("put", "w5", "x", *ALICE, name="alice: put w5 (range end)")
    ctl("del", "foo/b", *ALICE, name="alice: del foo/b")
    ctl("del", "foo/", "--prefix", *ALICE, name="alice: del --prefix foo/")
    ctl("txn", *ALICE, stdin='value("foo/a") = "1"\n\nput foo/b t\n\nget foo/a\n\n', name="alice: txn allowed")
    ctl("txn", *ALICE, stdin='value("bar") = "2"\n\nput foo/b t\n\n\n', name="alice: txn compare on bar")
    ctl("txn", *ALICE, stdin='value("foo/a") = "1"\n\nput foo/b t\n\nput bar t\n\n', name="alice: txn failure branch writes bar")
    ctl("get", "foo/a", *BOB, name="bob: get foo/a (no roles)")
    ctl("watch", "bar", *ALICE, name="alice: watch bar", timeout=3)
    ctl("watch", "foo/a", *ALICE, name="alice: watch foo/a", timeout=2)
    ctl("lease", "grant", "100", *ALICE, name="alice: lease grant")
    ctl("lease", "list", *ALICE, name="alice: lease list")

    def grant(*user):
        r = subprocess.run(["etcdctl", "--endpoints", ep, "lease", "grant", "100", *user],
                           capture_output=True, text=True, check=True)
        return re.search(r"lease ([0-9a-f]+) granted", r.stdout).group(1)

    # A lease holding a key alice may not write: she may neither put onto
    # it nor revoke it (etcd's checkLeasePuts); her own lease she may.
    theirs = grant(*ROOT)
    ctl("put", "bar/l", "1", f"--lease={theirs}", *ROOT, name="root: put bar/l on lease T")
    ctl("put", "foo/b", "t", f"--lease={theirs}", *ALICE, name="alice: put foo/b on lease T (holds bar/l)")
    ctl("lease", "revoke", theirs, *ALICE, name="alice: lease revoke T (holds bar/l)")
    ctl("get", "bar/l", "--print-value-only", *ROOT, name="root: get bar/l (still there)")
    mine = grant(*ALICE)
    ctl("put", "foo/b", "m", f"--lease={mine}", *ALICE, name="alice: put foo/b on her lease M")
    ctl("put", "foo/b", "n", f"--lease={mine}", *ALICE, name="alice: put foo/b on M again")
    ctl("lease", "revoke", mine, *ALICE, name="alice: lease revoke M")
    ctl("lease", "revoke", theirs, *ROOT, name="root: lease revoke T")
    ctl("put", "foo/b", "t", *ALICE, name="alice: put foo/b (back)")
    ctl("lock", "lk", "echo", "held", *ALICE, name="alice: lock lk")
    ctl("lock", "other", "echo", "held", *ALICE, name="alice: lock other")
    ctl("elect", "el", "v", *ALICE, name="alice: elect el", timeout=3)
    ctl("elect", "other", "v", *ALICE, name="alice: elect other", timeout=3)
    ctl("compaction", "1", *ALICE, name="alice: compaction")
    ctl("alarm", "list", *ALICE, name="alice: alarm list")
    ctl("endpoint", "hashkv", *ALICE, name="alice: endpoint hashkv", one=True)
    ctl("defrag", *ALICE, name="alice: defrag", one=True)
    ctl("member", "list", *ALICE, name="alice: member list", one=True, exit_only=True)
    ctl("user", "list", *ALICE, name="alice: user list")
    ctl("role", "add", "x", *ALICE, name="alice: role add x")
    ctl("auth", "disable", *ALICE, name="alice: auth disable")
    ctl("get", "", "--prefix", *ROOT, name="root: get --prefix <all>")
    ctl("put", "bar", "3", *ROOT, name="root: put bar")
    # Changes take effect at once.
    ctl("role", "revoke-permission", "writer", "foo/b", *ROOT)
    ctl("put", "foo/b", "z", *ALICE, name="alice: put foo/b (permission revoked)")
    ctl("role", "revoke-permission", "writer", "foo/b", *ROOT, name="role revoke-permission writer foo/b (again)")
    ctl("user", "revoke-role", "alice", "reader", *ROOT)
    ctl("get", "foo/a", *ALICE, name="alice: get foo/a (role revoked)")
    ctl("user", "revoke-role", "alice", "reader", *ROOT, name="user revoke-role alice reader (again)")
    ctl("user", "passwd", "alice", "--interactive=false", *ROOT, stdin="newpw\n")
    ctl("get", "w3", *ALICE, name="alice: get w3 (old password)")
    ctl("put", "w3", "p", "--user", "alice:newpw", name="alice: put w3 (new password)")
    ctl("role", "delete", "writer", *ROOT)
    ctl("put", "w3", "q", "--user", "alice:newpw", name="alice: put w3 (role deleted)")
    ctl("user", "get", "alice", *ROOT)
    # Root is protected while auth is on.
    ctl("user", "delete", "root", *ROOT, name="user delete root")
    ctl("role", "delete", "root", *ROOT, name="role delete root")
    ctl("user", "revoke-role", "root", "root", *ROOT, name="user revoke-role root root")
    ctl("user", "delete", "bob", *ROOT)
    ctl("user", "list", *ROOT)
    ctl("auth", "disable", *ROOT)
    ctl("get", "", "--prefix", name="get --prefix <all> (auth off)")
    ctl("user", "list", name="user list (auth off)")
    return out


def jwt_session(endpoints):
    """Auth with JWTs through etcdctl, then through the JSON gateway."""
    ep = ",".join(endpoints)
    out = []

    def ctl(*args, name=None):
        r = subprocess.run(["etcdctl", "--endpoints", ep, "--dial-timeout=2s", "--command-timeout=5s", *args],
                           capture_output=True, text=True)
        out.append((name or " ".join(args), f"exit={r.returncode}\n{(r.stdout + r.stderr).strip()}"))

    ctl("user", "add", "root", "--new-user-password=rootpw", "--interactive=false")
    ctl("user", "add", "alice", "--new-user-password=alicepw", "--interactive=false")
    ctl("role", "add", "r")
    ctl("role", "grant-permission", "r", "readwrite", "j/", "--prefix=true")
    ctl("user", "grant-role", "alice", "r")
    ctl("auth", "enable")
    ctl("put", "j/1", "a", *ALICE, name="alice: put j/1")
    ctl("get", "j/1", *ALICE, name="alice: get j/1")
    ctl("put", "x", "a", *ALICE, name="alice: put x")
    ctl("get", "", "--prefix", *ROOT, name="root: get --prefix <all>")

    host, port = endpoints[0].rsplit(":", 1)

    def post(path, body, token=None, name=None):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"Authorization": token} if token else {}
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        r = conn.getresponse()
        text = r.read().decode()
        conn.close()
        out.append((name or f"POST {path}", f"{r.status}\n{text}"))
        try:
            return json.loads(text)
        except ValueError:
            return {}

    b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
    post("/v3/auth/authenticate", {"name": "alice", "password": "wrong"}, name="gateway: authenticate (wrong password)")
    token = post("/v3/auth/authenticate", {"name": "alice", "password": "alicepw"},
                 name="gateway: authenticate alice").get("token", "")
    out[-1] = (out[-1][0], re.sub(r'"token":"[^"]*"', '"token":"T"', out[-1][1]))
    post("/v3/kv/range", {"key": b64("j/1")}, name="gateway: range j/1 (no token)")
    post("/v3/kv/range", {"key": b64("j/1")}, token, name="gateway: range j/1 (alice)")
    post("/v3/kv/put", {"key": b64("x"), "value": b64("v")}, token, name="gateway: put x (alice)")
    post("/v3/kv/put", {"key": b64("j/2"), "value": b64("v")}, token, name="gateway: put j/2 (alice)")
    post("/v3/kv/range", {"key": b64("j/1")}, "forged", name="gateway: range j/1 (forged token)")
    post("/v3/auth/user/list", {}, token, name="gateway: user list (alice)")
    ctl("auth", "disable", *ROOT)
    return out


def normalize_gateway(transcript):
    """Revisions by rank and IDs masked, as the etcdctl transcripts."""
    lines = normalize(transcript)
    lines = [re.sub(r'"(revision|create_revision|mod_revision)":"R?\d+"', r'"\1":"R"', l) for l in lines]
    return [re.sub(r'"(cluster_id|member_id|raft_term)":"\d+"', r'"\1":"X"', l) for l in lines]


def rsa_keys(work):
    priv, pub = os.path.join(work, "jwt.pem"), os.path.join(work, "jwt.pub.pem")
    subprocess.run(["openssl", "genrsa", "-out", priv, "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", priv, "-pubout", "-out", pub], check=True, capture_output=True)
    return f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"


def main():
    run_in_workdir("cairn-auth-", lambda work, procs: both(os.path.abspath(sys.argv[1]), work, procs))


def both(binary, work, procs):
    """The plain session, then JWTs and the gateway; True if all matched."""
    etcd = start_etcd(procs, work)
    wait_healthy(etcd[0])
    ref = normalize(session(etcd))
    if "--etcd-only" in sys.argv:
        print("\n".join(ref))
        return True
    cairn = start_cairn(procs, work, binary)
    for e in cairn:
        wait_healthy(e)
    got = normalize(session(cairn))
    if "--show" in sys.argv:
        print("\n".join(got))
    ok = compare_transcripts(ref, got, "auth session")
    # JWTs and the gateway, on fresh servers of each.
    procs.stop()
    token = rsa_keys(work)
    jwork = os.path.join(work, "jwt")
    os.makedirs(jwork)
    etcd = start_etcd(procs, jwork, extra=["--auth-token", token])
    wait_healthy(etcd[0])
    ref = normalize_gateway(jwt_session(etcd))
    cairn = start_cairn(procs, jwork, binary, extra=["--auth-token", token])
    for e in cairn:
        wait_healthy(e)
    got = normalize_gateway(jwt_session(cairn))
    if "--show" in sys.argv:
        print("\n".join(got))
    ok = compare_transcripts(ref, got, "JWT and gateway auth session") and ok
    return ok


if __name__ == "__main__":
    main()
