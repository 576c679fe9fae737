#!/usr/bin/env python3
"""Upload throughput: the chunk protocol and tus over loopback against dd.

By default it measures the way the dashboard uploads: a 512 MiB random file
through the chunk protocol in 5 MiB chunks, two in flight, alternating with
``dd ... conv=fsync`` of the same file to the same filesystem, twice (two
rounds), and prints the medians and their ratio to dd. Each round also
uploads the file through tus (tuspy, 32 MiB PATCHes, one at a time) and
writes it in chunks each fsynced before the next (what acknowledging a chunk
costs, without HTTP). It prints the daemon's peak RSS (VmHWM) and how many
request bodies it kept in memory or spooled to a file. Needs root (the test
users own the uploads). Results of earlier runs: bench/RESULTS.md.

The page cache's memory decides dd's rate on a VM whose host takes back the
memory a guest frees (virtio-balloon free page reporting): filling it is
several times faster with memory freed a moment ago than with memory freed
seconds ago, whatever the disk. Run back to back (``--settle 0``, the default,
as the dashboard's figures were taken) dd's rate then depends on what the step
before it freed, so read the rounds, not only the medians (bench/RESULTS.md
shows such a machine). ``--settle 10`` waits before each step, so every step
meets memory freed long ago.

    .venv/bin/python bench/upload.py [--size 512MiB] [--chunk-size 5MiB] [--parallel 2]
        [--rounds 2] [--settle 0] [--tus-chunk-size 32MiB] [--dir /var/tmp/hpcportal-bench]
"""

import argparse
import concurrent.futures
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "daemon"))

import requests  # noqa: E402

from hpcportal.config import parse_size  # noqa: E402
from support.daemon import Daemon, SharedTree, auth_headers  # noqa: E402
from support.users import ensure_test_users  # noqa: E402

MiB = 1024 * 1024


class BenchTree(SharedTree):
    """The shared tree under a folder of our choosing (the filesystem measured)."""

    def __init__(self, base):
        SharedTree.BASE = base
        super().__init__()


def make_source(path, size):
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        block = os.urandom(16 * MiB)
        counter = 0
        while left:
            # Vary each block cheaply so the data does not repeat.
            piece = counter.to_bytes(8, "little") + block[8:min(len(block), left)]
            piece = piece[:min(len(block), left)]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
            counter += 1
    return digest.hexdigest()


def run_dd(source, target):
    started = time.monotonic()
    subprocess.run(["dd", f"if={source}", f"of={target}", "bs=4M", "conv=fsync", "status=none"],
                   check=True)
    return time.monotonic() - started


def fsynced_chunks(source, target, size, chunk_size, parallel):
    """What acknowledging chunks costs by itself: each chunk written and fsynced
    before the next, ``parallel`` at a time, no HTTP. dd fsyncs once at the end."""
    started = time.monotonic()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(index):
        with open(source, "rb") as handle:
            handle.seek(index * chunk_size)
            os.pwrite(fd, handle.read(chunk_size), index * chunk_size)
        os.fsync(fd)

    try:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            list(pool.map(write, range((size + chunk_size - 1) // chunk_size)))
    finally:
        os.close(fd)
    return time.monotonic() - started


def chunk_upload(daemon, source, size, chunk_size, parallel):
    headers = auth_headers("alice")
    started = time.monotonic()
    info = requests.post(daemon.url + "/api/v2/files/upload/init", headers=headers, timeout=60,
                         json={"filename": "chunked.bin", "size": size,
                               "chunk_size": chunk_size}).json()
    sessions = {}

    def send(index):
        session = sessions.setdefault(index % parallel, requests.Session())
        with open(source, "rb") as handle:
            handle.seek(index * info["chunk_size"])
            body = handle.read(info["chunk_size"])
        answer = session.post(daemon.url + "/api/v2/files/upload/chunk", data=body, timeout=600,
                              params={"upload_id": info["upload_id"], "chunk_index": index},
                              headers={**headers, "Content-Type": "application/octet-stream"})
        answer.raise_for_status()

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(send, range(info["total_chunks"])))
    done = requests.post(daemon.url + "/api/v2/files/upload/complete", headers=headers, timeout=3600,
                         json={"upload_id": info["upload_id"]})
    done.raise_for_status()
    return time.monotonic() - started, done.json()


def tus_upload(daemon, source, chunk_size, number=0):
    from tusclient import client as tus_client

    started = time.monotonic()
    uploader = tus_client.TusClient(daemon.url + "/api/v2/files/tus/",
                                    headers=auth_headers("alice")).uploader(
        source, chunk_size=chunk_size, metadata={"filename": f"tus-{number}.bin"})
    uploader.upload()
    elapsed = time.monotonic() - started
    files = requests.get(daemon.url + "/api/v2/files", headers=auth_headers("alice"),
                         timeout=60).json()["files"]
    return elapsed, next(f for f in files if f["filename"] == f"tus-{number}.bin")


def _recv_bytes_hook(work, size):
    """A sitecustomize that changes waitress' default socket read size: what a
    ``recv_bytes=`` argument in server.py would do."""
    folder = os.path.join(work, "hook")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as handle:
        handle.write("import waitress.adjustments\n"
                     f"waitress.adjustments.Adjustments.recv_bytes = {int(size)}\n")
    return folder


def kept_bodies(daemon):
    """Request bodies the daemon kept in memory or spooled, from its metrics."""
    counts = {"memory": 0, "file": 0}
    for line in requests.get(daemon.url + "/metrics", timeout=60).text.splitlines():
        for kept in counts:
            if line.startswith(f'hpcportal_request_bodies_total{{kept="{kept}"}}'):
                counts[kept] = int(float(line.split()[-1]))
    return counts


def machine_memory():
    with open("/proc/meminfo") as handle:
        total = int(handle.readline().split()[1]) * 1024
    return f"{total / 1024 ** 3:.0f} GiB RAM"


def cpu_seconds(pid):
    """User and system CPU time of a process so far (a busy machine slows an
    upload; its CPU time changes less)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512MiB", help="file size")
    parser.add_argument("--dir", default="/var/tmp/hpcportal-bench",
                        help="folder on the filesystem to measure")
    parser.add_argument("--chunk-size", default="5MiB", help="chunk protocol chunk size (the dashboard's)")
    parser.add_argument("--tus-chunk-size", default="32MiB", help="tus client chunk size")
    parser.add_argument("--parallel", type=int, default=2, help="chunks in flight at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of dd, fsynced chunks, chunk and tus")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait before each step (0: back to back, see above)")
    parser.add_argument("--recv-bytes", default=None,
                        help="try another waitress recv_bytes (the daemon's is 256KiB) without editing server.py")
    parser.add_argument("--spool-dir", default=None,
                        help="TMPDIR of the daemon, where waitress spools request bodies")
    args = parser.parse_args(argv)
    size = parse_size(args.size)

    def rate(seconds):
        return size / MiB / seconds
    chunk_size = parse_size(args.chunk_size)
    tus_chunk = parse_size(args.tus_chunk_size)

    ensure_test_users()
    os.makedirs(args.dir, mode=0o755, exist_ok=True)
    tree = BenchTree(args.dir)
    work = tempfile.mkdtemp(dir=args.dir)
    daemon = None
    try:
        source = os.path.join(work, "source.bin")
        print(f"writing a {size / MiB:.0f} MiB source file ...", flush=True)
        expected = make_source(source, size)
        env = {"TMPDIR": args.spool_dir} if args.spool_dir else {}
        if args.recv_bytes:
            env["PYTHONPATH"] = _recv_bytes_hook(work, parse_size(args.recv_bytes))
        daemon = Daemon(tree, env=env, config={
            "server": {"threads": 8, "log_level": "warning"},
            "uploads": {"max_size": size + 1, "max_chunk_size": "64MiB",
                        "free_space_reserve": 0}}).start()
        rounds = []
        for number in range(args.rounds):
            # dd again each round, right before the uploads it is compared with.
            time.sleep(args.settle)
            dd_seconds = run_dd(source, os.path.join(work, "dd.out"))
            os.unlink(os.path.join(work, "dd.out"))
            time.sleep(args.settle)
            fsynced_seconds = fsynced_chunks(source, os.path.join(work, "fsynced.out"), size, chunk_size,
                                             args.parallel)
            os.unlink(os.path.join(work, "fsynced.out"))
            time.sleep(args.settle)
            cpu_before = cpu_seconds(daemon.proc.pid)
            chunk_seconds, chunk_file = chunk_upload(daemon, source, size, chunk_size, args.parallel)
            chunk_cpu = cpu_seconds(daemon.proc.pid) - cpu_before
            assert chunk_file["sha256"] == expected, "chunk upload: sha256 differs"
            os.unlink(chunk_file["storage_path"])
            time.sleep(args.settle)
            cpu_before = cpu_seconds(daemon.proc.pid)
            tus_seconds, tus_file = tus_upload(daemon, source, tus_chunk, number)
            tus_cpu = cpu_seconds(daemon.proc.pid) - cpu_before
            assert tus_file["sha256"] == expected, "tus upload: sha256 differs"
            os.unlink(tus_file["storage_path"])
            rounds.append((dd_seconds, chunk_seconds, tus_seconds, fsynced_seconds, chunk_cpu, tus_cpu))
            print(f"round {number + 1}: dd {rate(dd_seconds):6.1f} MiB/s, fsync per chunk "
                  f"{rate(fsynced_seconds):6.1f} MiB/s, chunk protocol "
                  f"{rate(chunk_seconds):6.1f} MiB/s (ratio {dd_seconds / chunk_seconds:.2f}), "
                  f"tus {rate(tus_seconds):6.1f} MiB/s (ratio {dd_seconds / tus_seconds:.2f})", flush=True)
        rss = peak_rss(daemon.proc.pid)
        bodies = kept_bodies(daemon)
    finally:
        if daemon:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
        tree.cleanup()

    def median(values):
        return statistics.median(values)

    print(f"size {size / MiB:.0f} MiB on {args.dir}, {args.rounds} rounds (medians), "
          f"{args.settle:g} s pause before each step; ratio = dd's time / the step's time "
          "(1.0: as fast as dd)")
    print(f"dd (bs=4M, conv=fsync)     {median([rate(r[0]) for r in rounds]):8.1f} MiB/s  "
          f"(rounds: {min(rate(r[0]) for r in rounds):.0f} to {max(rate(r[0]) for r in rounds):.0f})")
    print(f"fsync per {chunk_size // MiB} MiB chunk x{args.parallel} {median([rate(r[3]) for r in rounds]):8.1f} MiB/s  "
          f"ratio {median([r[0] / r[3] for r in rounds]):.2f}  (no HTTP: what acknowledging each chunk costs)")
    print(f"chunk protocol ({chunk_size // MiB} MiB x{args.parallel}) "
          f"{median([rate(r[1]) for r in rounds]):8.1f} MiB/s  "
          f"ratio {median([r[0] / r[1] for r in rounds]):.2f}  (incl. complete: sha256 + classify + move), "
          f"daemon CPU {median([r[4] for r in rounds]):.2f} s")
    print(f"tus (tuspy, {tus_chunk // MiB} MiB)        {median([rate(r[2]) for r in rounds]):8.1f} MiB/s  "
          f"ratio {median([r[0] / r[2] for r in rounds]):.2f}, daemon CPU {median([r[5] for r in rounds]):.2f} s")
    print(f"daemon peak RSS            {rss / MiB:8.1f} MiB")
    print("request bodies over 512 KiB " + ", ".join(f"{n} {kept}" for kept, n in bodies.items())
          + "  (memory: received within the daemon's body budget; file: spooled to TMPDIR)")
    print(f"machine: {os.cpu_count()} CPUs, {machine_memory()}, {platform.release()}, "
          f"load average {os.getloadavg()[0]:.1f} at the end (others' work slows every step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
