#!/usr/bin/env python3
"""TLS beside etcd: the same etcdctl and HTTPS session against a real etcd
and a 3-node Cairn, both with TLS on the client and peer ports, compared
line by line after normalizing.

Certificates come from `cairn certs` (a throwaway CA: one certificate for
the members, "alice" for the client; a second CA with "mallory"). Each side
runs three times: mutual TLS (`--client-cert-auth`), server-only TLS, and
a client CA without `--client-cert-auth` (certificates demanded, their
common names no one's: with auth on, root's certificate alone is refused
as naming no user, and root's password works). The
session: writes and reads with a client certificate, `endpoint health`,
no client certificate, a server the client does not trust, a client
certificate from another CA, plain http:// to the TLS port (etcdctl, and a
raw HTTP/1 request: etcd closes it unanswered),
`/version` over HTTPS with and without a certificate, TLS 1.2 only; and,
with mutual TLS, auth by certificate: with auth on, a client certificate's
common name is its user (no password, no token), so "root"'s certificate
manages users and "alice"'s is held to alice's permissions. `/version` over HTTPS with
and without a certificate, TLS 1.2 only.

Usage: tls.py CAIRN_BINARY   (etcd, etcdctl on PATH)
"""
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compat  # noqa: E402
from compat import compare_transcripts, run_in_workdir  # noqa: E402


def make_pki(binary, pki, *clients):
    """Two CAs, as a secured cluster should have: `pki` signs the members'
    client-port certificate ("member") and the clients'; `pki/peer` signs
    the members' peer certificate, so no client certificate passes for a
    member on the peer port."""
    subprocess.run([binary, "certs", "--dir", pki, "member", *clients], check=True, capture_output=True)
    subprocess.run([binary, "certs", "--dir", f"{pki}/peer", "member"], check=True, capture_output=True)


MUTUAL, SERVER_ONLY, CA_ONLY = "mutual TLS", "server-only TLS", "a client CA without --client-cert-auth"


def flags(pki, mode):
    """Mutual: --client-cert-auth and a CA; server-only: no client CA (etcd
    demands client certificates whenever it has one); CA only: a client CA
    without --client-cert-auth (certificates demanded, their names no
    one's)."""
    f = ["--cert-file", f"{pki}/member.pem", "--key-file", f"{pki}/member-key.pem",
         "--peer-cert-file", f"{pki}/peer/member.pem", "--peer-key-file", f"{pki}/peer/member-key.pem",
         "--peer-trusted-ca-file", f"{pki}/peer/ca.pem", "--peer-client-cert-auth"]
    if mode == MUTUAL:
        f += ["--client-cert-auth"]
    if mode != SERVER_ONLY:
        f += ["--trusted-ca-file", f"{pki}/ca.pem"]
    return f


def port_of(endpoint):
    return int(endpoint.rsplit(":", 1)[1])


def start_etcd(procs, work, pki, mode):
    name = f"etcd-{mode[0]}"
    eps = compat.start_etcd(procs, work, extra=flags(pki, mode), scheme="https", name=name)
    return [port_of(e) for e in eps]


def start_cairn(procs, work, binary, pki, mode, n=3):
    eps = compat.start_cairn(procs, work, binary, n, extra=flags(pki, mode), scheme="https",
                             prefix=f"c{mode[0]}")
    return [port_of(e) for e in eps]


def creds(pki, who="alice", ca=None):
    return ["--cacert", ca or f"{pki}/ca.pem", "--cert", f"{pki}/{who}.pem", "--key", f"{pki}/{who}-key.pem"]


def wait_ready(ports, pki, timeout=60):
    ep = ",".join(f"https://127.0.0.1:{p}" for p in ports)
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["etcdctl", "--endpoints", ep, *creds(pki, "root"), "--command-timeout=2s",
                            "endpoint", "health", "--cluster"], capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"{ep} never became healthy: {r.stderr}")


def https_get(port, path, ca, cert=None, max_version=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(f"{cert}.pem", f"{cert}-key.pem")
    if max_version:
        ctx.maximum_version = max_version
    try:
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        c.request("GET", path)
        r = c.getresponse()
        return f"{r.status} {r.read().decode()}"
    except (ssl.SSLError, OSError) as e:
        # The alert's kind, not OpenSSL's wording of it.
        return f"refused ({type(e).__name__})"


def raw_http(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    except ConnectionResetError:
        pass  # closed with the request unread: the same as a plain close here
    return data.decode() or "closed without an answer"


def session(ports, pki, other, mode):
    ep = f"https://127.0.0.1:{ports[0]}"
    out = []

    def ctl(name, *args, endpoint=ep):
        r = subprocess.run(["etcdctl", "--endpoints", endpoint, "--dial-timeout=2s", "--command-timeout=3s", *args],
                           capture_output=True, text=True)
        text = (r.stdout + r.stderr).strip()
        out.append((name, f"exit={r.returncode}\n{text}"))

    ctl("put with a client certificate", *creds(pki), "put", "k", "v")
    ctl("get with a client certificate", *creds(pki), "get", "k")
    ctl("endpoint health", *creds(pki), "endpoint", "health")
    ctl("get without a client certificate", "--cacert", f"{pki}/ca.pem", "get", "k")
    ctl("get from a server the client does not trust", *creds(pki, ca=f"{other}/ca.pem"), "get", "k")
    ctl("get with a certificate from another CA", "--cacert", f"{pki}/ca.pem",
        "--cert", f"{other}/mallory.pem", "--key", f"{other}/mallory-key.pem", "get", "k")
    ctl("get over plain http to the TLS port", "get", "k", endpoint=f"http://127.0.0.1:{ports[0]}")
    out.append(("raw HTTP/1 request to the TLS port", raw_http(ports[0])))
    ca = f"{pki}/ca.pem"
    out.append(("GET /version with a certificate", https_get(ports[0], "/version", ca, f"{pki}/alice")))
    out.append(("GET /version without a certificate", https_get(ports[0], "/version", ca)))
    out.append(("GET /version trusting another CA", https_get(ports[0], "/version", f"{other}/ca.pem", f"{pki}/alice")))
    out.append(("GET /version over TLS 1.2", https_get(ports[0], "/version", ca, f"{pki}/alice",
                                                       max_version=ssl.TLSVersion.TLSv1_2)))
    if mode == CA_ONLY:
        root = creds(pki, "root")
        pw = ["--user", "root:rootpw"]
        ctl("add user root", *root, "user", "add", "root", "--new-user-password=rootpw", "--interactive=false")
        ctl("auth enable (root, by password)", *root, *pw, "auth", "enable")
        ctl("root's certificate names no user", *root, "put", "k", "c")
        ctl("root's password writes", *root, *pw, "put", "k", "p")
        ctl("auth disable (root, by password)", *root, *pw, "auth", "disable")
    if mode == MUTUAL:
        root = creds(pki, "root")
        alice = creds(pki)
        ctl("add user root", *root, "user", "add", "root", "--new-user-password=rootpw", "--interactive=false")
        ctl("auth enable (as root's certificate)", *root, "auth", "enable")
        ctl("alice's certificate, no such user yet", *alice, "get", "k")
        ctl("add user alice without a password", *root, "user", "add", "alice", "--no-password")
        ctl("alice's certificate, no roles", *alice, "get", "k")
        ctl("role add r", *root, "role", "add", "r")
        ctl("grant r read on k", *root, "role", "grant-permission", "r", "read", "k")
        ctl("grant r to alice", *root, "user", "grant-role", "alice", "r")
        ctl("alice's certificate reads k", *alice, "get", "k")
        ctl("alice's certificate writes k", *alice, "put", "k", "w")
        ctl("alice has no password to log in with", *alice, "--user", "alice:", "get", "k")
        ctl("a password overrides the certificate", *alice, "--user", "root:rootpw", "put", "k", "r")
        ctl("root's certificate reads everything", *root, "get", "", "--prefix")
        ctl("auth disable (as root's certificate)", *root, "auth", "disable")
    return out


def normalize(transcript):
    lines = []
    for cmd, text in transcript:
        # etcdctl's own client-side retry logs carry timestamps and client ids.
        t = "\n".join(l for l in text.splitlines() if not l.startswith('{"level":'))
        t = re.sub(r"127\.0\.0\.1:\d+", "ENDPOINT", t)
        t = re.sub(r"took = [0-9.]+[µmn]?s", "took = T", t)
        t = re.sub(r'"(etcdserver|etcdcluster)":"[0-9.]+"', r'"\1":"V"', t)
        lines.append(f"$ {cmd}\n{t}")
    return lines


def main():
    run_in_workdir("cairn-tls-", lambda work, procs: both_modes(os.path.abspath(sys.argv[1]), work, procs))


def both_modes(binary, work, procs):
    """Mutual and server-only TLS sessions; True if both matched."""
    pki, other = os.path.join(work, "pki"), os.path.join(work, "other")
    make_pki(binary, pki, "alice", "root")
    subprocess.run([binary, "certs", "--dir", other, "mallory"], check=True, capture_output=True)
    ok = True
    for what in (MUTUAL, SERVER_ONLY, CA_ONLY):
        etcd = start_etcd(procs, work, pki, what)
        cairn = start_cairn(procs, work, binary, pki, what)
        wait_ready(etcd, pki)
        wait_ready(cairn, pki)
        ref = normalize(session(etcd, pki, other, what))
        got = normalize(session(cairn, pki, other, what))
        if "--show" in sys.argv:
            print("\n".join(got))
        ok = compare_transcripts(ref, got, f"TLS session ({what})") and ok
    return ok


if __name__ == "__main__":
    main()
