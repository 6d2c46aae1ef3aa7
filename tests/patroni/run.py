#!/usr/bin/env python3
"""Patroni manages PostgreSQL failover on Cairn as it does on etcd.

Three Patroni members (Debian's `patroni`, PostgreSQL 15, synchronous
replication) keep their cluster state — leader key, member keys, the
synchronous standby, the failover lock — in the store through its JSON
gateway (Patroni's `etcd3` DCS speaks only HTTP). The run, once against a
3-node Cairn and once against etcd:

1. bootstrap: one member becomes leader, another its synchronous standby;
2. 200 rows are committed on the leader, each in its own transaction
   (synchronous commit: acknowledged only once on the standby too);
3. the leader's Patroni and PostgreSQL are killed with SIGKILL;
4. a remaining member must take the leader key and be promoted, and every
   committed row must be on it; `patronictl list` must show the new leader.

Then both again, secured: TLS on client and peer ports with client
certificates required, auth on, and Patroni logging in as a `patroni` user
allowed read-write on its namespace only (HTTPS, a client certificate, a
password and the token it gets for it).

Usage: run.py CAIRN_BINARY   (etcd, patroni, PostgreSQL 15 installed)
PostgreSQL refuses to run as root: as root, Patroni runs as `postgres`.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "compat"))
from compat import Procs, free_port, start_cairn, start_etcd, wait_healthy  # noqa: E402
import tls  # noqa: E402

PG_BIN = "/usr/lib/postgresql/15/bin"
ROWS = 200


def start_store(kind, procs, work, binary):
    """A fresh etcd, or a fresh 3-node Cairn; its client endpoints, ready;
    secured: the Patroni side of the credentials too."""
    if not kind.endswith("secured"):
        eps = start_etcd(procs, work) if kind == "etcd" else start_cairn(procs, work, binary)
        for ep in eps:
            wait_healthy(ep)
        return eps, None
    pki = os.path.join(work, "pki")
    tls.make_pki(binary, pki, "root")
    # Patroni talks to the JSON gateway, which in etcd refuses a client
    # certificate with a common name while auth is on: Patroni's names no one.
    subprocess.run([binary, "certs", "--dir", pki, "--no-cn", "patroni"], check=True, capture_output=True)
    start = tls.start_etcd if kind.startswith("etcd") else (
        lambda procs, work, pki, mode: tls.start_cairn(procs, work, binary, pki, mode))
    ports = start(procs, work, pki, tls.MUTUAL)
    tls.wait_ready(ports, pki)
    ep = ",".join(f"https://127.0.0.1:{p}" for p in ports)
    root = tls.creds(pki, "root")
    for args in (["user", "add", "root", "--new-user-password=rootpw", "--interactive=false"], ["auth", "enable"],
                 ["user", "add", "patroni", "--new-user-password=patronipw", "--interactive=false"],
                 ["role", "add", "patroni"],
                 ["role", "grant-permission", "patroni", "readwrite", "/service/", "--prefix=true"],
                 ["user", "grant-role", "patroni", "patroni"]):
        subprocess.run(["etcdctl", "--endpoints", ep, *root, *args], check=True, capture_output=True)
    secure = {"protocol": "https", "cacert": f"{pki}/ca.pem", "cert": f"{pki}/patroni.pem",
              "key": f"{pki}/patroni-key.pem", "username": "patroni", "password": "patronipw"}
    return [f"127.0.0.1:{p}" for p in ports], secure


def wait(what, pred, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def patroni_config(work, name, hosts, rest, pg, secure=None):
    data = os.path.join(work, name)
    cfg = {
        "scope": "cairn-ha",
        "namespace": "/service/",
        "name": name,
        "restapi": {"listen": f"127.0.0.1:{rest}", "connect_address": f"127.0.0.1:{rest}"},
        "etcd3": {"hosts": hosts, "protocol": "http", **(secure or {})},
        "bootstrap": {
            "dcs": {
                "ttl": 10, "loop_wait": 1, "retry_timeout": 4,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": True,
                "postgresql": {"use_pg_rewind": False, "parameters": {
                    "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                    "max_replication_slots": 10, "wal_keep_size": "64MB"}},
            },
            "initdb": [{"encoding": "UTF8"}],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{pg}",
            "connect_address": f"127.0.0.1:{pg}",
            "data_dir": data,
            "bin_dir": PG_BIN,
            "pgpass": os.path.join(work, f"{name}.pgpass"),
            "authentication": {
                "replication": {"username": "replicator", "password": "rep"},
                "superuser": {"username": "postgres", "password": "sup"},
            },
            "parameters": {"unix_socket_directories": work, "shared_buffers": "16MB"},
            "pg_hba": ["local all all trust", "host replication replicator 127.0.0.1/32 md5",
                       "host all all 127.0.0.1/32 md5"],
        },
    }
    path = os.path.join(work, f"{name}.yml")
    with open(path, "w") as f:
        json.dump(cfg, f)  # JSON is YAML
    return path


def rest(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}
    except Exception:
        return None, {}


def psql(port, sql):
    env = dict(os.environ, PGPASSWORD="sup", PGCONNECT_TIMEOUT="3")
    return subprocess.run([f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
                           "-tAc", sql], capture_output=True, text=True, env=env)


def run_on(kind, hosts, work, procs, user, secure=None):
    """One Patroni session against `hosts`; returns a summary dict."""
    members = []
    for i in range(3):
        name, r, pg = f"pg{i}", free_port(), free_port()
        cfg = patroni_config(work, name, hosts, r, pg, secure)
        p = procs.start(["patroni", cfg], os.path.join(work, f"{name}.log"), user=user)
        members.append({"name": name, "rest": r, "pg": pg, "proc": p, "cfg": cfg})

    def leader():
        for m in members:
            if m["proc"].poll() is None and rest(m["rest"], "/leader")[0] == 200:
                return m
        return None

    def sync_standby():
        return any(rest(m["rest"], "/sync")[0] == 200 for m in members if m["proc"].poll() is None)

    first = wait(f"{kind}: a leader", leader, 120)
    wait(f"{kind}: a synchronous standby", sync_standby, 120)
    r = psql(first["pg"], "create table rows (i int primary key)")
    if r.returncode != 0:
        raise SystemExit(f"{kind}: create table: {r.stderr}")
    for i in range(ROWS):
        r = psql(first["pg"], f"insert into rows values ({i})")
        if r.returncode != 0:
            raise SystemExit(f"{kind}: insert {i}: {r.stderr}")
    # Kill the leader: Patroni and its PostgreSQL, as a crash would.
    pidfile = os.path.join(work, first["name"], "postmaster.pid")
    postmaster = int(open(pidfile).read().split()[0])
    killed = time.time()
    os.killpg(first["proc"].pid, signal.SIGKILL)
    os.kill(postmaster, signal.SIGKILL)
    first["proc"].wait()
    second = wait(f"{kind}: a new leader", lambda: (m := leader()) and m is not first and m, 120)
    took = time.time() - killed
    count = wait(f"{kind}: the new leader to answer",
                 lambda: (r := psql(second["pg"], "select count(*) from rows")).returncode == 0 and r.stdout.strip(),
                 60)
    listed = subprocess.run(["patronictl", "-c", second["cfg"], "list", "-f", "json"],
                            capture_output=True, text=True)
    roles = {m["Member"]: m["Role"] for m in json.loads(listed.stdout or "[]")}
    return {"rows": int(count), "failover_s": round(took, 1), "new_leader_listed": roles.get(second["name"]) == "Leader",
            "old": first["name"], "new": second["name"]}


def main():
    binary = os.path.abspath(sys.argv[1])
    user = "postgres" if os.geteuid() == 0 else None
    ok = True
    kinds = os.environ.get("PATRONI_KINDS", "etcd,cairn,etcd-secured,cairn-secured").split(",")
    for kind in kinds:
        work = tempfile.mkdtemp(prefix=f"patroni-{kind}-")
        os.chmod(work, 0o777)
        procs = Procs()
        try:
            hosts, secure = start_store(kind, procs, work, binary)
            if user:
                for root, dirs, files in os.walk(work):
                    for f in [root, *(os.path.join(root, n) for n in files)]:
                        shutil.chown(f, user)
            got = run_on(kind, hosts, work, procs, user, secure)
            good = got["rows"] == ROWS and got["new_leader_listed"]
            print(f"{kind}: {'ok' if good else 'FAILED'}: {got}")
            ok = ok and good
        finally:
            procs.stop()
            if "--keep" in sys.argv:
                print("kept", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
