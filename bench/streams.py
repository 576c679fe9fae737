"""Event-stream benchmark: many open GET /api/v2/events streams on one head.

    .venv/bin/python bench/streams.py [--streams 500,1000] [--requests 50] [--threads 8]

Starts a real daemon on loopback (SQLite), then for each number of streams:
opens them on raw sockets (one user, its cap raised), measures the latency of
/healthz and of GET /api/v2/notifications (p50, p99) while they stay open, the
daemon's RSS and thread count, and how long one event takes to reach every
stream (an upload's upload.completed, from the completing answer to the last
stream that shows it). Prints the figures; it asserts nothing. Needs root (test users).
"""

import argparse
import os
import selectors
import socket
import sys
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "daemon"))

from support.daemon import Daemon, SharedTree, auth_headers, make_token  # noqa: E402
from support.uploads import upload  # noqa: E402
from support.users import ensure_test_users  # noqa: E402


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def open_streams(port, count, token):
    request = (f"GET /api/v2/events?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        sockets.append(sock)
    selector = selectors.DefaultSelector()
    heads = {}
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        heads[sock] = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(b"retry:" not in h for h in heads.values()):
        for key, _ in selector.select(1):
            heads[key.fileobj] += key.fileobj.recv(65536)
    opened = sum(h.startswith(b"HTTP/1.1 200") for h in heads.values())
    return sockets, selector, opened


def latencies(url, headers, count):
    session = requests.Session()
    took = []
    for _ in range(count):
        start = time.monotonic()
        session.get(url, headers=headers, timeout=30).raise_for_status()
        took.append((time.monotonic() - start) * 1000)
    return percentile(took, 0.5), percentile(took, 0.99)


def process_figures(pid):
    with open(f"/proc/{pid}/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["Threads"])


def fan_out(daemon, sockets, selector):
    upload(daemon, "alice", b"bench", filename="fan-out.txt")
    done = time.monotonic()
    seen = {sock: b"" for sock in sockets}
    deadline = done + 60
    while time.monotonic() < deadline and any(b"upload.completed" not in v for v in seen.values()):
        for key, _ in selector.select(1):
            seen[key.fileobj] += key.fileobj.recv(65536)
    reached = sum(b"upload.completed" in v for v in seen.values())
    return reached, (time.monotonic() - done) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="500,1000")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    ensure_test_users()
    tree = SharedTree()
    levels = [int(n) for n in args.streams.split(",")]
    daemon = Daemon(tree, config={
        "server": {"threads": args.threads},
        "notifications": {"max_streams": max(levels) + 10, "max_streams_per_user": max(levels) + 10}})
    try:
        daemon.start()
        headers = auth_headers("alice")
        print(f"{'streams':>8} {'opened':>7} {'healthz p50/p99 ms':>20} {'inbox p50/p99 ms':>18} "
              f"{'RSS MiB':>8} {'threads':>8} {'fan-out ms':>11}")
        for level in [0, *levels]:
            sockets, selector, opened = open_streams(daemon.port, level, make_token("alice"))
            try:
                health = latencies(daemon.url + "/healthz", {}, args.requests)
                inbox = latencies(daemon.url + "/api/v2/notifications", headers, args.requests)
                rss, threads = process_figures(daemon.proc.pid)
                reached, took = fan_out(daemon, sockets, selector) if level else (0, 0.0)
                print(f"{level:>8} {opened:>7} {health[0]:>9.1f}/{health[1]:<9.1f} {inbox[0]:>8.1f}/{inbox[1]:<8.1f} "
                      f"{rss:>8} {threads:>8} {took:>8.0f} ({reached})")
            finally:
                selector.close()
                for sock in sockets:
                    sock.close()
            time.sleep(1)  # let the loop see the closed streams before the next level
        print("load average:", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    finally:
        daemon.stop()
        tree.cleanup()


if __name__ == "__main__":
    main()
