#!/usr/bin/env python3
"""Helper of bench/paginated-rss.sh: loads keys into one etcd-compatible
server and runs concurrent limited ranges against it while sampling the
server's RSS. Talks raw gRPC through the `etcd3` package's generated stubs
(the same package tests/compat uses), so both servers get byte-identical
requests.

  paginated_rss.py load  HOST:PORT --keys N --val-size B
  paginated_rss.py run   HOST:PORT --pid PID --mode MODE [--clients 50 --limit 10 --duration S]

Modes (every range is key=PREFIX, range_end=end of PREFIX, `limit`):
  paginate    every client pages through the whole prefix from its start,
              each page continuing at last key + "\\0" (time-capped).
  first-page  every client asks for the first page again and again: the
              span of every request is the whole key set (time-boxed).
  slices      client i pages through its own 1/clients of the keys
              (range_end = its slice's end): together they read every key
              once, so the run finishes and has a wall time.
`run` prints one JSON object: RSS (VmRSS, and its anonymous/file parts) at
rest before the run, peak while it runs (100 ms samples, plus the kernel's
VmHWM reset just before the run), pages, keys returned and seconds.
"""
import argparse
import json
import os
import sys
import threading
import time

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
import grpc  # noqa: E402
from etcd3 import etcdrpc  # noqa: E402

PREFIX = b"pg/"
PREFIX_END = b"pg0"  # "/" + 1
MAX_MSG = 64 << 20


def key(i):
    return PREFIX + b"%08d" % i


def channels(endpoint, n):
    opts = [("grpc.max_receive_message_length", MAX_MSG), ("grpc.max_send_message_length", MAX_MSG)]
    # Distinct channel args so gRPC does not share one subchannel (one TCP
    # connection) between them.
    return [grpc.insecure_channel(endpoint, options=opts + [("cairn.bench.conn", i)]) for i in range(n)]


def load(args):
    chans = channels(args.endpoint, 4)
    stubs = [etcdrpc.KVStub(c) for c in chans]
    batch = args.batch
    batches = list(range(0, args.keys, batch))
    lock = threading.Lock()
    errors = []

    def worker(w):
        stub = stubs[w % len(stubs)]
        while True:
            with lock:
                if not batches or errors:
                    return
                start = batches.pop()
            ops = [
                etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key(i), value=os.urandom(args.val_size)))
                for i in range(start, min(start + batch, args.keys))
            ]
            try:
                stub.Txn(etcdrpc.TxnRequest(success=ops), timeout=60)
            except grpc.RpcError as e:  # pragma: no cover - reported below
                with lock:
                    errors.append(str(e))
                return

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("load failed: " + errors[0])
    # Check the load: count the keys.
    r = stubs[0].Range(etcdrpc.RangeRequest(key=PREFIX, range_end=PREFIX_END, count_only=True), timeout=60)
    if r.count != args.keys:
        sys.exit(f"load failed: {r.count} keys, wanted {args.keys}")
    print(json.dumps({"loaded": args.keys, "val_size": args.val_size, "seconds": round(time.monotonic() - t0, 1)}))


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def reset_hwm(pid):
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    def __init__(self, pid, every=0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append(status(self.pid))
            self.stop.wait(self.every)


def rest_rss(pid, seconds=2.0):
    s = Sampler(pid)
    s.start()
    time.sleep(seconds)
    s.stop.set()
    s.join()
    last = s.samples[-1]
    return {"rss": last["VmRSS"], "anon": last["RssAnon"], "file": last["RssFile"]}


def run(args):
    chans = channels(args.endpoint, args.conns)
    stubs = [etcdrpc.KVStub(c) for c in chans]
    # Warm the connections (and make sure the server answers) before measuring.
    for s in stubs:
        s.Range(etcdrpc.RangeRequest(key=PREFIX, range_end=PREFIX_END, limit=1), timeout=60)
    base = rest_rss(args.pid)
    hwm_reset = reset_hwm(args.pid)

    lock = threading.Lock()
    totals = {"pages": 0, "kvs": 0, "passes": 0, "errors": 0}
    first_error = []
    deadline = time.monotonic() + args.duration
    per = args.keys // args.clients

    def client(c):
        stub = stubs[c % len(stubs)]
        pages = kvs = passes = 0
        if args.mode == "slices":
            start = key(c * per)
            end = key((c + 1) * per) if c < args.clients - 1 else PREFIX_END
        else:
            start, end = PREFIX, PREFIX_END
        cur = start
        while time.monotonic() < deadline:
            try:
                r = stub.Range(etcdrpc.RangeRequest(key=cur, range_end=end, limit=args.limit), timeout=args.duration + 120)
            except grpc.RpcError as e:
                with lock:
                    totals["errors"] += 1
                    if not first_error:
                        first_error.append(str(e.code()) + ": " + str(e.details()))
                return
            pages += 1
            kvs += len(r.kvs)
            if args.mode == "first-page":
                continue
            if r.more and r.kvs:
                cur = r.kvs[-1].key + b"\0"
            else:
                passes += 1
                if args.mode == "slices":
                    break
                cur = start
        with lock:
            totals["pages"] += pages
            totals["kvs"] += kvs
            totals["passes"] += passes

    sampler = Sampler(args.pid)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    sampler.stop.set()
    sampler.join()
    hwm = status(args.pid)["VmHWM"] if hwm_reset else None
    peak = max(sampler.samples, key=lambda s: s["VmRSS"])
    out = {
        "mode": args.mode,
        "clients": args.clients,
        "limit": args.limit,
        "seconds": round(secs, 1),
        "capped": secs >= args.duration,
        "pages": totals["pages"],
        "kvs": totals["kvs"],
        "passes": totals["passes"],
        "errors": totals["errors"],
        "first_error": first_error[0] if first_error else None,
        "base_rss": base["rss"],
        "base_anon": base["anon"],
        "base_file": base["file"],
        "peak_rss": peak["VmRSS"],
        "peak_anon": max(s["RssAnon"] for s in sampler.samples),
        "peak_file": max(s["RssFile"] for s in sampler.samples),
        "hwm": hwm,
        "samples": len(sampler.samples),
    }
    print(json.dumps(out))
    for c in chans:
        c.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("endpoint")
    lp.add_argument("--keys", type=int, default=150_000)
    lp.add_argument("--val-size", type=int, default=4096)
    lp.add_argument("--batch", type=int, default=64, help="puts per Txn (etcd's --max-txn-ops is 128)")
    lp.add_argument("--threads", type=int, default=8)
    rp = sub.add_parser("run")
    rp.add_argument("endpoint")
    rp.add_argument("--pid", type=int, required=True)
    rp.add_argument("--mode", choices=["paginate", "first-page", "slices"], required=True)
    rp.add_argument("--keys", type=int, default=150_000, help="keys loaded (slices mode splits them)")
    rp.add_argument("--clients", type=int, default=50)
    rp.add_argument("--conns", type=int, default=5)
    rp.add_argument("--limit", type=int, default=10)
    rp.add_argument("--duration", type=float, default=60, help="cap on the run, seconds")
    args = p.parse_args()
    load(args) if args.cmd == "load" else run(args)


if __name__ == "__main__":
    main()
