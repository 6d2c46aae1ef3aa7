#!/usr/bin/env python3
"""/metrics beside etcd's: both scraped and parsed with the Prometheus
project's own text-format parser (prometheus_client), after some traffic.

Checks: every series etcd's Grafana dashboard (etcd's contrib/mixin) and its
older dashboard query exists in Cairn's output with the type etcd gives it;
the values that must move did (RPC counts, fsyncs, bytes); grpc_server_*
carry go-grpc-prometheus's labels; Cairn's own cairn_* series are there.

Usage: metrics.py ETCD_ENDPOINT CAIRN_ENDPOINT   (host:port each, or
https://host:port with ETCDCTL_CACERT/_CERT/_KEY set; Cairn's a member of a
3-node cluster, so peer series exist)
"""
import os
import ssl
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# (family name as the parser reports it, type). Counters lose their _total
# suffix in prometheus_client's parser.
DASHBOARD = [
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_is_leader", "gauge"),
    ("etcd_server_leader_changes_seen", "counter"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_pending", "gauge"),
    ("etcd_server_proposals_failed", "counter"),
    ("etcd_server_version", "gauge"),
    ("etcd_server_id", "gauge"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("etcd_disk_backend_commit_duration_seconds", "histogram"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
    ("etcd_debugging_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_network_client_grpc_received_bytes", "counter"),
    ("etcd_network_client_grpc_sent_bytes", "counter"),
    ("grpc_server_started", "counter"),
    ("grpc_server_handled", "counter"),
    ("process_resident_memory_bytes", "gauge"),
]
# Peer series exist only with peers (Cairn's cluster has them; the 1-node
# reference etcd does not).
PEERS = [
    ("etcd_network_peer_sent_bytes", "counter"),
    ("etcd_network_peer_received_bytes", "counter"),
    ("etcd_network_peer_round_trip_time_seconds", "histogram"),
]
CAIRN_OWN = ["cairn_region_count", "cairn_region_is_leader", "cairn_region_applied_index"]


def scrape(endpoint):
    """`endpoint`'s /metrics: `host:port` over HTTP, `https://host:port`
    with the client certificate etcdctl is given (ETCDCTL_CACERT, _CERT,
    _KEY)."""
    ctx = None
    if endpoint.startswith("https://"):
        ctx = ssl.create_default_context(cafile=os.environ["ETCDCTL_CACERT"])
        ctx.load_cert_chain(os.environ["ETCDCTL_CERT"], os.environ["ETCDCTL_KEY"])
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10, context=ctx).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def traffic(endpoint):
    for args in (["put", "m", "1"], ["get", "m"], ["get", "m", "--rev=9000000000000000000"]):
        subprocess.run(["etcdctl", "--endpoints", endpoint, *args], capture_output=True)


def value(fam, suffix="", **labels):
    return sum(s.value for s in fam.samples
               if s.name == fam.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()))


def main():
    etcd_ep, cairn_ep = sys.argv[1], sys.argv[2]
    before = scrape(cairn_ep)
    for ep in (etcd_ep, cairn_ep):
        traffic(ep)
    etcd, cairn = scrape(etcd_ep), scrape(cairn_ep)
    bad = []
    for name, kind in DASHBOARD:
        if name not in etcd or etcd[name].type != kind:
            bad.append(f"reference etcd lacks {name} ({kind}): the list is wrong")
        if name not in cairn:
            bad.append(f"missing {name}")
        elif cairn[name].type != kind:
            bad.append(f"{name} is a {cairn[name].type}, etcd's is a {kind}")
    for name, kind in PEERS:
        if name not in cairn or cairn[name].type != kind:
            bad.append(f"missing peer series {name} ({kind})")
    for name in CAIRN_OWN:
        if name not in cairn:
            bad.append(f"missing {name}")
    if not bad:
        started = cairn["grpc_server_started"]
        handled = cairn["grpc_server_handled"]
        put = dict(grpc_type="unary", grpc_service="etcdserverpb.KV", grpc_method="Put")
        if value(started, "_total", **put) <= value(before["grpc_server_started"], "_total", **put):
            bad.append("grpc_server_started_total for KV/Put did not grow")
        if value(handled, "_total", grpc_code="OutOfRange", **dict(put, grpc_method="Range")) < 1:
            bad.append("the future-revision Range is not counted as OutOfRange")
        if value(cairn["etcd_disk_wal_fsync_duration_seconds"], "_count") < 1:
            bad.append("no WAL fsync observed")
        if value(cairn["etcd_server_has_leader"]) != 1:
            bad.append("etcd_server_has_leader is not 1")
        if value(cairn["etcd_network_client_grpc_received_bytes"], "_total") <= 0:
            bad.append("no client bytes counted")
    for b in bad:
        print("METRICS:", b)
    print(f"/metrics: {len(DASHBOARD) + len(PEERS)} dashboard series checked, {len(bad)} problems")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
