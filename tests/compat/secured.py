#!/usr/bin/env python3
"""The real-client comparisons against secured servers: etcd and a 3-node
Cairn with TLS on client and peer ports, client certificates required, and
auth enabled (a `root` user holding the root role). Then, with
credentials — the root client certificate and `root`'s password, through
the environment variables etcdctl reads:

- the whole etcdctl session of compat.py, compared line by line;
- the JSON gateway session of gateway.py (HTTPS, a certificate without a
  common name, a token from /v3/auth/authenticate), compared as text;
- /metrics of each over HTTPS with the client certificate, checked as
  metrics.py checks them;
- the timing scenarios (contending locks, election, watch progress, lease
  keep-alive) against each;
- the Python `etcd3` client against each (TLS, authenticated, token);
- the `etcd-client` crate's tests against each (TLS with the root
  certificate, logged in as root) unless --no-rust-client;
- and without credentials, a read is refused by both.

Usage: secured.py CAIRN_BINARY [--no-rust-client]   (etcd, etcdctl on PATH)
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compat import HERE, compare_transcripts, normalize, run_in_workdir, rust_client, session  # noqa: E402
from tls import MUTUAL, make_pki, start_cairn, start_etcd, wait_ready  # noqa: E402


def secure_env(pki):
    return {
        "ETCDCTL_CACERT": f"{pki}/ca.pem",
        "ETCDCTL_CERT": f"{pki}/root.pem",
        "ETCDCTL_KEY": f"{pki}/root-key.pem",
    }


def enable_auth(eps, pki):
    env = {**os.environ, **secure_env(pki)}
    ep = ",".join(eps)
    for args in (["user", "add", "root", "--new-user-password=rootpw", "--interactive=false"], ["auth", "enable"]):
        subprocess.run(["etcdctl", "--endpoints", ep, *args], env=env, check=True, capture_output=True)


def unauthenticated_read(eps, pki):
    """With a client certificate whose user does not exist and no password."""
    env = {**os.environ, "ETCDCTL_CACERT": f"{pki}/ca.pem", "ETCDCTL_CERT": f"{pki}/alice.pem",
           "ETCDCTL_KEY": f"{pki}/alice-key.pem"}
    r = subprocess.run(["etcdctl", "--endpoints", eps[0], "get", "foo"], env=env, capture_output=True, text=True)
    lines = [l for l in r.stderr.splitlines() if not l.startswith('{"level":')]
    return f"exit={r.returncode} " + " ".join(lines)


def main():
    run_in_workdir("cairn-secured-", lambda work, procs: secured(os.path.abspath(sys.argv[1]), work, procs))


def secured(binary, work, procs):
    """Everything above; True if all passed."""
    pki = os.path.join(work, "pki")
    make_pki(binary, pki, "root", "alice")
    # etcd's gateway refuses a certificate with a common name while auth is
    # on: the gateway session's certificate names no one.
    subprocess.run([binary, "certs", "--dir", pki, "--no-cn", "gateway"], check=True, capture_output=True)
    etcd_ports = start_etcd(procs, work, pki, MUTUAL)
    cairn_ports = start_cairn(procs, work, binary, pki, MUTUAL)
    wait_ready(etcd_ports, pki)
    wait_ready(cairn_ports, pki)
    etcd = [f"https://127.0.0.1:{p}" for p in etcd_ports]
    cairn = [f"https://127.0.0.1:{p}" for p in cairn_ports]
    enable_auth(etcd, pki)
    enable_auth(cairn, pki)
    refused = [unauthenticated_read(etcd, pki), unauthenticated_read(cairn, pki)]
    ok = refused[0] == refused[1] and "denied" in refused[0]
    print("unknown user refused:", ok, refused[1])
    os.environ.update(secure_env(pki))
    os.environ["ETCDCTL_USER"] = "root:rootpw"
    ok = compare_transcripts(normalize(session(etcd)), normalize(session(cairn)),
                             "etcdctl session, secured (TLS, client certificates, auth)") and ok
    gw = {"GATEWAY_CACERT": f"{pki}/ca.pem", "GATEWAY_CERT": f"{pki}/gateway.pem",
          "GATEWAY_KEY": f"{pki}/gateway-key.pem", "GATEWAY_USER": "root:rootpw"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "gateway.py"), etcd[0].removeprefix("https://"),
                        cairn[0].removeprefix("https://")], env={**os.environ, **gw})
    print("JSON gateway session, secured:", "ok" if r.returncode == 0 else "FAILED")
    ok = r.returncode == 0 and ok
    r = subprocess.run([sys.executable, os.path.join(HERE, "metrics.py"), etcd[0], cairn[0]])
    print("/metrics beside etcd's, secured (HTTPS, client certificate):", "ok" if r.returncode == 0 else "FAILED")
    ok = r.returncode == 0 and ok
    for label, eps in (("etcd", etcd), ("cairn", cairn)):
        r = subprocess.run([sys.executable, os.path.join(HERE, "scenarios.py"), ",".join(eps)])
        print(f"etcdctl coordination scenarios against secured {label}:", "ok" if r.returncode == 0 else "FAILED")
        ok = r.returncode == 0 and ok
        r = subprocess.run([sys.executable, os.path.join(HERE, "python_etcd3.py"), eps[0].removeprefix("https://")])
        print(f"python etcd3 against secured {label}:", "ok" if r.returncode == 0 else "FAILED")
        ok = r.returncode == 0 and ok
        if "--no-rust-client" not in sys.argv:
            ok = rust_client(eps, f"secured {label}", {
                "COMPAT_CA": f"{pki}/ca.pem", "COMPAT_CERT": f"{pki}/root.pem", "COMPAT_KEY": f"{pki}/root-key.pem",
                "COMPAT_USER": "root", "COMPAT_PASSWORD": "rootpw"}) and ok
    return ok


if __name__ == "__main__":
    main()
