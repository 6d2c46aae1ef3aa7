#!/usr/bin/env python3
"""The Python `etcd3` client against one endpoint (real etcd or Cairn).
Exits non-zero on the first failed check. Usage: python_etcd3.py HOST:PORT

A secured server: set ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY (TLS with a
client certificate) and ETCDCTL_USER (`name:password`, authenticated by
the client, which then sends its token) — the variables etcdctl reads."""
import os
import sys

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
import etcd3  # noqa: E402


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    env = os.environ.get
    secure = {}
    if env("ETCDCTL_CACERT"):
        secure = dict(ca_cert=env("ETCDCTL_CACERT"), cert_cert=env("ETCDCTL_CERT"), cert_key=env("ETCDCTL_KEY"))
    if env("ETCDCTL_USER"):
        user, password = env("ETCDCTL_USER").split(":", 1)
        secure.update(user=user, password=password)
    c = etcd3.client(host=host, port=int(port), timeout=10, **secure)
    for k, v in [("py/a", "1"), ("py/b", "2"), ("py/c", "3")]:
        c.put(k, v)
    value, meta = c.get("py/a")
    assert value == b"1" and meta.version == 1, (value, meta)
    c.put("py/a", "10")
    value, meta = c.get("py/a")
    assert value == b"10" and meta.version == 2 and meta.mod_revision > meta.create_revision
    got = sorted((m.key, v) for v, m in c.get_prefix("py/"))
    assert got == [(b"py/a", b"10"), (b"py/b", b"2"), (b"py/c", b"3")], got
    got = [m.key for _, m in c.get_prefix("py/", sort_order="descend")]
    assert got == [b"py/c", b"py/b", b"py/a"], got
    # Compare-and-swap through a transaction, both outcomes.
    ok, _ = c.transaction(
        compare=[c.transactions.value("py/b") == "2"],
        success=[c.transactions.put("py/b", "20")],
        failure=[],
    )
    assert ok
    ok, responses = c.transaction(
        compare=[c.transactions.version("py/b") == 1],
        success=[c.transactions.put("py/b", "never")],
        failure=[c.transactions.get("py/b")],
    )
    assert not ok and responses[0][0][0] == b"20", responses
    assert c.replace("py/c", "3", "30") is True
    assert c.replace("py/c", "3", "31") is False
    assert c.delete("py/a") is True
    assert c.delete("py/a") is False
    assert c.get("py/a") == (None, None)
    assert c.delete_prefix("py/").deleted == 2
    status = c.status()
    assert status.leader is not None and status.raft_term >= 1
    members = list(c.members)
    assert members and all(m.client_urls for m in members)
    print("python etcd3: ok")


if __name__ == "__main__":
    main()
