#!/usr/bin/env python3
"""Coordination scenarios with etcdctl that need timing and process deaths:
two contending lockers (the holder is SIGKILLed, its lease expires), an
election whose leader process dies (observer sees the change), interactive
watch progress, and lease keep-alive. Run against real etcd too, so each
scenario is known to describe etcd's behaviour.

Usage: scenarios.py ENDPOINT[,ENDPOINT...]   exits non-zero on failure."""
import re
import signal
import subprocess
import sys
import threading
import time

EP = sys.argv[1]


def ctl(*args):
    return ["etcdctl", "--endpoints", EP, *args]


class Reader:
    """Collects a process's stdout lines in the background."""

    def __init__(self, argv, stdin=None):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=stdin, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(re.search(pattern, l) for l in self.lines):
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def check(name, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if not ok else ""))
    return ok


def lock_contention():
    holder = Reader(ctl("lock", "--ttl=3", "scenario-lock"))
    ok = check("first locker acquires", holder.wait_for(r"^scenario-lock/", 10), holder.lines)
    waiter = Reader(ctl("lock", "--ttl=3", "scenario-lock", "echo", "second-acquired"))
    time.sleep(1.5)
    ok &= check("second locker waits while the first holds", not waiter.lines, waiter.lines)
    holder.p.send_signal(signal.SIGKILL)  # no unlock: the lease must expire
    holder.p.wait()
    ok &= check("second locker acquires after the holder's lease expires",
                waiter.wait_for(r"^second-acquired$", 15), waiter.lines)
    waiter.stop()
    return ok


def election_leader_change():
    observer = Reader(ctl("elect", "-l", "scenario-election"))
    alice = Reader(ctl("elect", "scenario-election", "alice"))
    ok = check("alice becomes leader", alice.wait_for(r"^alice$", 10), alice.lines)
    bob = Reader(ctl("elect", "scenario-election", "bob"))
    time.sleep(1.0)
    ok &= check("bob waits", "bob" not in bob.lines, bob.lines)
    ok &= check("observer sees alice", observer.wait_for(r"^alice$", 10), observer.lines)
    alice.p.send_signal(signal.SIGINT)  # the leader's process dies
    alice.p.wait()
    ok &= check("bob becomes leader after alice's process dies", bob.wait_for(r"^bob$", 15), bob.lines)
    ok &= check("observer sees the change to bob", observer.wait_for(r"^bob$", 10), observer.lines)
    for r in (observer, bob):
        r.stop()
    return ok


def interactive_progress():
    w = Reader(ctl("watch", "-i"), stdin=subprocess.PIPE)
    w.p.stdin.write("watch scenario-w/ --prefix\n")
    w.p.stdin.flush()
    time.sleep(0.5)
    subprocess.run(ctl("put", "scenario-w/a", "1"), capture_output=True)
    ok = check("interactive watch sees the put", w.wait_for(r"^scenario-w/a$", 10), w.lines)
    w.p.stdin.write("progress\n")
    w.p.stdin.flush()
    ok &= check("progress request answered", w.wait_for(r"^progress notify: [1-9]\d*$", 10), w.lines)
    w.stop()
    return ok


def lease_keep_alive():
    lease = subprocess.run(ctl("lease", "grant", "30"), capture_output=True, text=True).stdout.split()[1]
    r = subprocess.run(ctl("lease", "keep-alive", "--once", lease), capture_output=True, text=True)
    ok = check("keep-alive --once", re.match(rf"^lease {lease} keepalived with TTL\(30\)$", r.stdout.strip()) is not None,
               r.stdout + r.stderr)
    ka = Reader(ctl("lease", "keep-alive", lease))
    ok &= check("keep-alive stream", ka.wait_for(rf"^lease {lease} keepalived with TTL\(30\)$", 10), ka.lines)
    ka.stop()
    return ok


def main():
    ok = True
    for s in (lock_contention, election_leader_change, interactive_progress, lease_keep_alive):
        print(s.__name__)
        ok = s() and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
