#!/usr/bin/env python3
"""The storage quota and NOSPACE alarm beside etcd: a fresh 1-member etcd and
a fresh 1-node Cairn, each with `--quota-backend-bytes` 2 MB, take the same
etcdctl session — fill until refused, see the alarm, read, delete, compact,
defragment, disarm, write again — and the transcripts must match after
normalising member IDs, revisions and how many puts fit (the two stores
count bytes differently). Then the same on a secured etcd and Cairn (TLS on
both ports, client certificates, auth on; etcdctl as root).

Usage: quota.py CAIRN_BINARY   (etcd, etcdctl on PATH)
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compat import Procs, compare_transcripts, free_port, wait_ready  # noqa: E402
from secured import enable_auth, secure_env  # noqa: E402
from tls import flags, make_pki  # noqa: E402
from tls import wait_ready as tls_ready  # noqa: E402

QUOTA = str(2_000_000)


def start(procs, work, argv0, name, pki=None):
    """One member with the small quota; its endpoint. With `pki`: TLS on
    both ports and client certificates required (tls.py's flags)."""
    c, p = free_port(), free_port()
    scheme = "https" if pki else "http"
    procs.start([*argv0, "--name", name, "--data-dir", os.path.join(work, name),
                 "--quota-backend-bytes", QUOTA,
                 "--listen-client-urls", f"{scheme}://127.0.0.1:{c}",
                 "--advertise-client-urls", f"{scheme}://127.0.0.1:{c}",
                 "--listen-peer-urls", f"{scheme}://127.0.0.1:{p}",
                 "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{p}",
                 "--initial-cluster", f"{name}={scheme}://127.0.0.1:{p}",
                 *(flags(pki, True) if pki else [])], os.path.join(work, f"{name}.log"))
    if pki:
        tls_ready([c], pki)
        return f"https://127.0.0.1:{c}"
    ep = f"127.0.0.1:{c}"
    wait_ready(ep)
    return ep


def session(ep):
    out = []

    def ctl(*args, stdin=None, name=None):
        r = subprocess.run(["etcdctl", "--endpoints", ep, *args], input=stdin, capture_output=True, text=True)
        lines = [l for l in (r.stdout + r.stderr).splitlines() if not l.startswith('{"level"')]
        out.append((name or " ".join(args), f"exit={r.returncode}\n" + "\n".join(lines).strip()))
        return r

    filled = None
    for i in range(200):
        value = os.urandom(60_000).hex()
        r = subprocess.run(["etcdctl", "--endpoints", ep, "put", f"r{i:03}", value], capture_output=True, text=True)
        if r.returncode != 0:
            err = [l for l in r.stderr.splitlines() if not l.startswith('{"level"')]
            filled = f"refused after some puts: {' '.join(err)}"
            break
    out.append(("put r### <60 KB> until refused", filled or "never refused"))
    ctl("alarm", "list")
    ctl("put", "small", "x", name="put small x (alarm raised)")
    ctl("lease", "grant", "10", name="lease grant (alarm raised)")
    ctl("get", "r000", "--keys-only", name="get r000 (reads still work)")
    ctl("txn", stdin="\n\ndel r000\n\n", name="txn with only a delete")
    r = subprocess.run(["etcdctl", "--endpoints", ep, "del", "--prefix", "r"], capture_output=True, text=True)
    # How many fit differs (the stores count bytes differently): compare
    # only that some were deleted.
    out.append(("del --prefix r (deleted any)", f"exit={r.returncode} {int(r.stdout.strip() or 0) > 0}"))
    rev = subprocess.run(["etcdctl", "--endpoints", ep, "get", "small", "-w", "json"], capture_output=True, text=True)
    revision = re.search(r'"revision":(\d+)', rev.stdout).group(1)
    ctl("compaction", revision, name="compaction <now>")
    ctl("defrag")
    ctl("alarm", "disarm")
    ctl("put", "small", "y", name="put small y (after disarm)")
    ctl("alarm", "list", name="alarm list (after disarm)")
    ctl("get", "small", "--print-value-only")
    return out


def normalize(transcript):
    lines = []
    for cmd, text in transcript:
        t = re.sub(r"memberID:\d+", "memberID:M", text)
        t = re.sub(r"compacted revision \d+", "compacted revision R", t)
        t = re.sub(r"\b[0-9a-f]{16}\b", "X", t)
        t = re.sub(r"member\[[^\]]+\]", "member[EP]", t)
        lines.append(f"$ {cmd}\n{t.strip()}")
    return lines


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="cairn-quota-")
    procs = Procs()
    try:
        etcd = start(procs, work, ["etcd"], "ref")
        cairn = start(procs, work, [binary, "serve"], "c0")
        ok = compare_transcripts(normalize(session(etcd)), normalize(session(cairn)), "quota session")
        # Again secured: TLS, client certificates, auth on, as root.
        pki = os.path.join(work, "pki")
        make_pki(binary, pki, "root")
        etcd = start(procs, work, ["etcd"], "sref", pki)
        cairn = start(procs, work, [binary, "serve"], "sc0", pki)
        enable_auth([etcd], pki)
        enable_auth([cairn], pki)
        os.environ.update(secure_env(pki))
        os.environ["ETCDCTL_USER"] = "root:rootpw"
        ok = compare_transcripts(normalize(session(etcd)), normalize(session(cairn)),
                                 "quota session, secured (TLS, client certificates, auth)") and ok
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
