#!/usr/bin/env python3
"""Soak: a mixed load from many concurrent clients against one daemon.

Each client is a thread with its own HTTP session, acting as one of the test
users and picking its next call by weight: catalog reads (images, templates),
small uploads through the chunk protocol (init, chunks, complete, then the
file is deleted so the disk stays flat), job submissions of a trivial script,
job lists, output slices and short live output streams, and ``/api/v2/me``.
Areas the daemon does not serve (not in its ``/api/openapi.json``) are left
out. A warm-up runs first, so that worker threads, database connections and
caches exist; the daemon's RSS, threads and open descriptors are sampled after
it (load stopped, every client connection closed) and again after the measured
run. They must not grow, except the database pool's connections to the server
(``--database-port``): a higher peak of concurrent queries legitimately adds one,
up to ``database.max_connections``.

By hand, against a daemon of its own (needs root: the test users own uploads)::

    .venv/bin/python bench/soak.py --duration 600 --clients 32

or against a running one (tokens minted with its HMAC secret)::

    .venv/bin/python bench/soak.py --url http://127.0.0.1:5000 --pid $(pidof -s hpcportald) \
        --secret-file /etc/hpcportal/jwt-secret --users alice,bob --duration 600

Prints one JSON report (``--json``) or a table: requests per second, errors
(5xx and transport errors), refusals by status, latency percentiles per kind of
call, and RSS / threads / fds at start and end.
"""

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from urllib.parse import urlsplit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "daemon"))

import requests  # noqa: E402

from hpcportal.auth import mint_token  # noqa: E402

# kind -> weight. Submissions are rare: each one is a real Slurm job.
WEIGHTS = {"me": 2, "images": 6, "templates": 6, "upload": 2, "jobs": 4, "submit": 1,
           "output": 3, "stream": 1}
NEEDS_PATH = {"images": "/api/v2/apptainer/images", "templates": "/api/v2/templates",
              "upload": "/api/v2/files/upload/init", "jobs": "/api/slurm/jobs",
              "submit": "/api/slurm/jobs/submit", "output": "/api/slurm/jobs/{job_id}/output",
              "stream": "/api/slurm/jobs/{job_id}/output"}
UPLOAD_SIZE = 96 * 1024
UPLOAD_CHUNK = 32 * 1024


def tcp_sockets():
    """{socket inode: (state, local port, remote port)} of this network namespace's
    TCP sockets, IPv4 and IPv6 (/proc/net/tcp{,6}; state "0A" is LISTEN)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue   # no IPv6
        for line in lines:
            fields = line.split()
            found[fields[9]] = (fields[3], int(fields[1].rsplit(":", 1)[1], 16),
                                int(fields[2].rsplit(":", 1)[1], 16))
    return found


def socket_kinds(targets, port=None):
    """What the sockets among the fd ``targets`` are: "listen", "http" (a client's
    connection to ``port``, server side), "tcp-out:<remote port>" (e.g. the
    database pool's connections), or "other" (unix sockets, ...)."""
    tcp = None
    kinds = Counter()
    for target in targets:
        if not target.startswith("socket:["):
            continue
        tcp = tcp_sockets() if tcp is None else tcp
        entry = tcp.get(target[len("socket:["):-1])
        if entry is None:
            kinds["other"] += 1
        elif entry[0] == "0A":
            kinds["listen"] += 1
        elif port is not None and entry[1] == port:
            kinds["http"] += 1
        else:
            kinds[f"tcp-out:{entry[2]}"] += 1
    return dict(kinds)


def process_figures(pid, port=None, database_port=None):
    """RSS (bytes), threads and open file descriptors of ``pid``, from /proc;
    its sockets by kind (``socket_kinds``, ``port``: the daemon's own); "pooled":
    its connections to the database server on ``database_port``, and
    "unpooled_fds": every other descriptor."""
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                figures["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                figures["threads"] = int(line.split()[1])
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    figures["fds"] = len(targets)
    # What the descriptors are, kind by kind, to explain a growth.
    figures["fd_kinds"] = dict(Counter(t.split(":")[0] if ":" in t else t for t in targets))
    figures["sockets"] = socket_kinds(targets, port)
    # The pool opens a connection whenever more threads query at once than ever
    # before and keeps it (up to database.max_connections): such growth is no leak.
    figures["pooled"] = figures["sockets"].get(f"tcp-out:{database_port}", 0) if database_port else 0
    figures["unpooled_fds"] = figures["fds"] - figures["pooled"]
    return figures


def settled_figures(pid, baseline=None, wait=10.0, port=None, database_port=None):
    """Figures once in-flight connections have closed: polls (up to ``wait`` s)
    until no client connection is left open on the daemon's side (the clients
    closed theirs) and threads and fds other than the database pool's are back to
    ``baseline`` or stop changing."""
    deadline = time.monotonic() + wait
    last = process_figures(pid, port, database_port)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = process_figures(pid, port, database_port)
        if now["sockets"].get("http"):
            last = now
            continue
        if baseline and now["unpooled_fds"] <= baseline["unpooled_fds"] \
                and now["threads"] <= baseline["threads"]:
            return now
        if not baseline and now["fds"] == last["fds"] and now["threads"] == last["threads"]:
            return now
        last = now
    return last


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * (len(sorted_values) - 1)))))
    return sorted_values[index]


class Recorder:
    def __init__(self):
        self._lock = threading.Lock()
        self.latencies = defaultdict(list)
        self.statuses = defaultdict(Counter)
        self.errors = []

    def record(self, kind, status, seconds, detail=None):
        with self._lock:
            self.latencies[kind].append(seconds)
            self.statuses[kind][status] += 1
            if status == "transport" or (isinstance(status, int) and status >= 500):
                if len(self.errors) < 20:
                    self.errors.append(f"{kind}: {status} {detail or ''}"[:300])


class Client(threading.Thread):
    """One simulated dashboard user."""

    def __init__(self, soak, user, seed):
        super().__init__(name=f"soak-{user}-{seed}", daemon=True)
        self._soak = soak
        self._user = user
        self._random = random.Random(seed)
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {soak.token(user)}"
        self._jobs = []

    def run(self):
        try:
            while not self._soak.stop.is_set():
                kind = self._random.choices(self._soak.kinds, self._soak.weights)[0]
                getattr(self, f"do_{kind}")()
        finally:
            self._session.close()

    def _call(self, kind, method, path, **kwargs):
        kwargs.setdefault("timeout", 60)
        started = time.monotonic()
        try:
            answer = self._session.request(method, self._soak.url + path, **kwargs)
        except requests.RequestException as exc:
            self._soak.recorder.record(kind, "transport", time.monotonic() - started, repr(exc))
            return None
        self._soak.recorder.record(kind, answer.status_code, time.monotonic() - started,
                                   answer.text[:200] if answer.status_code >= 500 else None)
        return answer

    def do_me(self):
        self._call("me", "GET", "/api/v2/me")

    def do_images(self):
        self._call("images", "GET", "/api/v2/apptainer/images",
                   params=self._random.choice([{}, {"partition": "compute"}, {"q": "python"}]))

    def do_templates(self):
        self._call("templates", "GET", "/api/v2/templates")

    def do_upload(self):
        data = os.urandom(UPLOAD_SIZE)
        started = self._call("upload", "POST", "/api/v2/files/upload/init",
                             json={"filename": f"soak-{self._random.randrange(10**6)}.dat",
                                   "size": len(data), "chunk_size": UPLOAD_CHUNK})
        if started is None or started.status_code != 201:
            return
        info = started.json()
        size = info["chunk_size"]
        for index in range(info["total_chunks"]):
            chunk = self._call("upload", "POST", "/api/v2/files/upload/chunk",
                               data=data[index * size:(index + 1) * size],
                               params={"upload_id": info["upload_id"], "chunk_index": index},
                               headers={"Content-Type": "application/octet-stream"})
            if chunk is None or chunk.status_code != 200:
                return
        done = self._call("upload", "POST", "/api/v2/files/upload/complete",
                          json={"upload_id": info["upload_id"]})
        if done is not None and done.status_code == 200:
            self._call("upload", "DELETE", f"/api/v2/files/{done.json()['file_id']}")

    def do_jobs(self):
        self._call("jobs", "GET", "/api/slurm/jobs", params={"limit": 20})

    def do_submit(self):
        answer = self._call("submit", "POST", "/api/slurm/jobs/submit", json={
            "jobName": "soak", "partition": self._soak.partition, "nodes": 1, "cpus": 1,
            "memory": "100MB", "time": "00:01:00",
            "script": "#!/bin/bash\necho soak output line\necho soak error line >&2\n"})
        if answer is not None and answer.status_code == 200:
            self._jobs.append(answer.json()["jobId"])
            del self._jobs[:-10]

    def _job(self):
        return self._random.choice(self._jobs) if self._jobs else self._soak.any_job(self._user)

    def do_output(self):
        job = self._job()
        if job is None:
            return self.do_jobs()
        self._call("output", "GET", f"/api/slurm/jobs/{job}/output",
                   params={"stream": self._random.choice(["stdout", "stderr"])})

    def do_stream(self):
        """A live stream read for a moment, then dropped like a closed browser tab."""
        job = self._job()
        if job is None:
            return self.do_jobs()
        started = time.monotonic()
        try:
            with self._session.get(self._soak.url + f"/api/slurm/jobs/{job}/output",
                                   headers={"Accept": "text/event-stream"}, stream=True,
                                   timeout=(10, 10)) as answer:
                status = answer.status_code
                try:
                    for _ in answer.iter_content(1024):
                        if time.monotonic() - started > 1.0:
                            break
                except requests.RequestException:
                    pass  # read timeout: a quiet stream between heartbeats
        except requests.RequestException as exc:
            self._soak.recorder.record("stream", "transport", time.monotonic() - started, repr(exc))
            return
        self._soak.recorder.record("stream", status, time.monotonic() - started)


class Soak:
    def __init__(self, url, make_token, users, clients, pid=None, partition=None, kinds=None,
                 database_port=None):
        self.url = url.rstrip("/")
        self.port = urlsplit(self.url).port
        self.database_port = database_port
        self._make_token = make_token
        self._tokens = {}
        self.users = list(users)
        self.clients = clients
        self.pid = pid
        self.stop = threading.Event()
        self.recorder = Recorder()
        paths = requests.get(self.url + "/api/openapi.json", timeout=30).json()["paths"]
        wanted = kinds or list(WEIGHTS)
        self.kinds = [k for k in wanted if NEEDS_PATH.get(k) is None or NEEDS_PATH[k] in paths]
        self.skipped = [k for k in wanted if k not in self.kinds]
        self.weights = [WEIGHTS[k] for k in self.kinds]
        self.partition = partition or self._default_partition(paths)
        self._known_jobs = {}

    def token(self, user):
        if user not in self._tokens:
            self._tokens[user] = self._make_token(user)
        return self._tokens[user]

    def _default_partition(self, paths):
        if "/api/slurm/partitions" not in paths:
            return None
        try:
            answer = requests.get(self.url + "/api/slurm/partitions", timeout=60,
                                  headers={"Authorization": f"Bearer {self.token(self.users[0])}"})
            partitions = answer.json().get("partitions") or []
        except (requests.RequestException, ValueError):
            return None
        default = [p["name"] for p in partitions if p.get("default")]
        return (default or [p["name"] for p in partitions] or [None])[0]

    def any_job(self, user):
        """A job of ``user`` from the jobs list (for output calls before own submits)."""
        if user not in self._known_jobs:
            try:
                answer = requests.get(self.url + "/api/slurm/jobs", timeout=60,
                                      headers={"Authorization": f"Bearer {self.token(user)}"})
                jobs = answer.json().get("jobs") or []
                # A job sbatch made elsewhere (source: cluster) may have no output file left.
                self._known_jobs[user] = next((j.get("jobId") or j.get("job_id") for j in jobs
                                               if (j.get("jobId") or j.get("job_id"))
                                               and j.get("source", "portal") == "portal"), None)
            except (requests.RequestException, ValueError):
                self._known_jobs[user] = None
        return self._known_jobs[user]

    def _run_phase(self, seconds, sample_every=None):
        self.stop.clear()
        self.recorder = Recorder()
        self.samples = []
        threads = [Client(self, self.users[i % len(self.users)], seed=i) for i in range(self.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while time.monotonic() - started < seconds:
            time.sleep(min(sample_every or seconds, max(0.0, seconds - (time.monotonic() - started))))
            if sample_every and self.pid:
                figures = process_figures(self.pid, self.port, self.database_port)
                self.samples.append((round(time.monotonic() - started), figures["rss"] // 2**20,
                                     figures["threads"], figures["fds"]))
        self.stop.set()
        for thread in threads:
            thread.join(120)
        return time.monotonic() - started

    def run(self, duration, warmup, max_warmup_rounds=4):
        """Warm up until pools (worker threads, database connections) stop
        growing, at most ``max_warmup_rounds`` rounds of ``warmup`` s; then measure."""
        self._run_phase(warmup)
        settle = dict(port=self.port, database_port=self.database_port)
        start = settled_figures(self.pid, **settle) if self.pid else None
        for _ in range(max_warmup_rounds - 1 if self.pid else 0):
            self._run_phase(warmup)
            again = settled_figures(self.pid, baseline=start, **settle)
            if again["unpooled_fds"] <= start["unpooled_fds"] and again["threads"] <= start["threads"]:
                break
            start = again
        elapsed = self._run_phase(duration, sample_every=max(5.0, duration / 12))
        end = settled_figures(self.pid, baseline=start, **settle) if self.pid else None
        return self.report(elapsed, start, end)

    def report(self, elapsed, start, end):
        recorder = self.recorder
        every = sorted(v for values in recorder.latencies.values() for v in values)
        statuses = Counter()
        for counts in recorder.statuses.values():
            statuses.update(counts)
        errors = sum(n for status, n in statuses.items()
                     if status == "transport" or (isinstance(status, int) and status >= 500))

        def latency(values):
            values = sorted(values)
            return {"p50_ms": _ms(percentile(values, .5)), "p90_ms": _ms(percentile(values, .9)),
                    "p99_ms": _ms(percentile(values, .99)), "max_ms": _ms(values[-1] if values else None)}

        return {
            "duration_s": round(elapsed, 1), "clients": self.clients, "users": self.users,
            "requests": len(every), "requests_per_s": round(len(every) / elapsed, 1) if elapsed else 0,
            "errors": errors, "error_samples": recorder.errors,
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "latency": latency(every),
            "by_kind": {kind: {"requests": len(values), **latency(values),
                               "statuses": {str(k): v for k, v in recorder.statuses[kind].items()}}
                        for kind, values in sorted(recorder.latencies.items())},
            "skipped": self.skipped, "partition": self.partition,
            "process_start": start, "process_end": end,
            # (seconds, RSS MiB, threads, fds) during the measured run, under load.
            "samples": getattr(self, "samples", []),
        }


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def print_table(report, out=sys.stdout):
    print(f"{report['requests']} requests in {report['duration_s']} s from {report['clients']} "
          f"clients: {report['requests_per_s']} req/s, {report['errors']} errors", file=out)
    print(f"statuses: {report['statuses']}", file=out)
    print(f"{'kind':<10} {'requests':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}", file=out)
    rows = list(report["by_kind"].items()) + [("all", {"requests": report["requests"], **report["latency"]})]
    for kind, row in rows:
        print(f"{kind:<10} {row['requests']:>8} {row['p50_ms'] or '-':>8} {row['p90_ms'] or '-':>8} "
              f"{row['p99_ms'] or '-':>8} {row['max_ms'] or '-':>8}", file=out)
    for label in ("process_start", "process_end"):
        figures = report[label]
        if figures:
            print(f"{label}: rss {figures['rss'] / 2**20:.1f} MiB, threads {figures['threads']}, "
                  f"fds {figures['fds']} ({figures['pooled']} pooled database connections), "
                  f"sockets {figures['sockets']}", file=out)
    if report.get("samples"):
        print("under load (s: RSS MiB/threads/fds): " + ", ".join(
            f"{t}: {rss}/{threads}/{fds}" for t, rss, threads, fds in report["samples"]), file=out)
    if report["skipped"]:
        print(f"not served, skipped: {', '.join(report['skipped'])}", file=out)
    for sample in report["error_samples"]:
        print(f"error: {sample}", file=out)


def _own_daemon(args):
    """A daemon on a temporary shared tree, like the tests start (needs root)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from support.daemon import TEST_SECRET, Daemon, SharedTree
    from support.users import ensure_test_users
    ensure_test_users()
    config = {"server": {"threads": args.threads, "log_level": "warning"},
              "security": {"rate_limits": {"submit": 0, "upload_init": 0, "scan": 0}},
              "uploads": {"min_chunk_size": "1KiB", "chunk_size": "64KiB", "free_space_reserve": 0}}
    if os.environ.get("SLURM_CONF"):
        config["slurm"] = {"conf": os.environ["SLURM_CONF"]}
    tree = SharedTree()
    daemon = Daemon(tree, config=config).start()
    return daemon, tree, lambda user: mint_token(TEST_SECRET, user)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running daemon (default: start one of our own)")
    parser.add_argument("--pid", type=int, help="the running daemon's pid (for RSS/threads/fds)")
    parser.add_argument("--secret-file", help="the daemon's HMAC secret, to mint tokens")
    parser.add_argument("--users", default="alice,bob", help="comma-separated unix users")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10, help="seconds before measuring")
    parser.add_argument("--threads", type=int, default=8, help="own daemon: server.threads")
    parser.add_argument("--kinds", help=f"comma-separated subset of {','.join(WEIGHTS)}")
    parser.add_argument("--database-port", type=int,
                        help="the database server's port: its pooled connections may grow")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    daemon = tree = None
    if args.url:
        if not args.secret_file:
            parser.error("--url needs --secret-file")
        secret = open(args.secret_file).read().strip()
        url, pid, make_token = args.url, args.pid, lambda user: mint_token(secret, user)
    else:
        daemon, tree, make_token = _own_daemon(args)
        url, pid = daemon.url, daemon.proc.pid
    try:
        soak = Soak(url, make_token, args.users.split(","), args.clients, pid=pid,
                    kinds=args.kinds.split(",") if args.kinds else None,
                    database_port=args.database_port)
        report = soak.run(args.duration, args.warmup)
    finally:
        if daemon:
            daemon.stop()
            tree.cleanup()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
