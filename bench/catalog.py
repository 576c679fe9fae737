"""Image catalog benchmark: scan times, drop-to-visible latency, list latency.

    .venv/bin/python bench/catalog.py [--images 2000] [--drops 20] [--requests 200]

Generates N small valid SIF images (one shared squashfs root filesystem, with
and without inspect-metadata.json) in a temporary shared tree, then reports:
- full scan of the folder into an empty index, and a rescan with nothing
  changed (in process, through the same indexer the daemon uses);
- drop-to-visible latency (median, p95) with the inotify and the polling
  watcher: an image is copied in (cp) and the API polled until it is listed;
- list latency (p50, p99) with and without filters, against a real daemon.
Prints the figures; it asserts nothing about them. Needs root (test users).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "daemon"))

from support.daemon import Daemon, SharedTree, auth_headers  # noqa: E402
from support.sifbuild import build_sif, make_squashfs, rootfs_tree  # noqa: E402
from support.users import ensure_test_users  # noqa: E402

from hpcportal.config import Config  # noqa: E402
from hpcportal.db import upgrade  # noqa: E402
from hpcportal.portal import build_portal  # noqa: E402

SETTLE = 0.5
POLL = 1.0


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def generate(images_root, count, staging):
    squashfs = make_squashfs(rootfs_tree(labels={"bench": "yes"}, apps={"solver": {}, "post": {}}))
    # Build a few distinct files, then copy: building is not what we measure.
    templates = []
    for variant in range(4):
        templates.append(build_sif(
            os.path.join(staging, f"template{variant}.sif"), squashfs=squashfs,
            with_inspect_metadata=variant % 2 == 0,
            labels={"org.opencontainers.image.description": f"benchmark image variant {variant}"},
            apps={"solver": {"help": "Solves."}, "post": {}}))
    types = ["compute", "viz", "gpu", "cfd"]
    for number in range(count):
        folder = os.path.join(images_root, types[number % len(types)])
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(templates[number % len(templates)],
                        os.path.join(folder, f"tool{number:05d}_1.{number % 7}.sif"))
    return templates[0]


def scan_times(tree):
    config = Config.from_dict({
        "paths": {"images": tree.images, "templates": tree.templates, "uploads": tree.uploads},
        "database": {"url": f"sqlite:///{tree.state}/portal.db"},
        "auth": {"secret": "bench-secret-0123456789-abcdefghijklmnop"},
        "catalog": {"settle_seconds": 0},
    })
    portal = build_portal(config)
    upgrade(portal.database)
    indexer = portal.indexer
    started = time.monotonic()
    full = indexer.scan(["images"])["images"]
    full_seconds = time.monotonic() - started
    started = time.monotonic()
    again = indexer.scan(["images"])["images"]
    rescan_seconds = time.monotonic() - started
    portal.database.close()
    return full, full_seconds, again, rescan_seconds


def drop_latency(tree, watcher, sample, drops, headers):
    daemon = Daemon(tree, config={"catalog": {"watcher": watcher, "settle_seconds": SETTLE,
                                              "poll_interval": POLL}})
    daemon.start()
    try:
        latencies = []
        for number in range(drops):
            name = f"drop-{watcher}-{number}_2.0.sif"
            target = os.path.join(tree.images, "compute", name)
            started = time.monotonic()
            shutil.copyfile(sample, target)
            while True:
                answer = requests.get(daemon.url + "/api/v2/apptainer/images",
                                      params={"q": name, "type": "compute"}, headers=headers,
                                      timeout=30)
                if answer.json()["total"] == 1:
                    break
                if time.monotonic() - started > 120:
                    raise RuntimeError(f"{name} never appeared")
                time.sleep(0.02)
            latencies.append(time.monotonic() - started)
        return latencies
    finally:
        daemon.stop()


def list_latency(tree, requests_count, headers):
    daemon = Daemon(tree, config={"catalog": {"settle_seconds": SETTLE}})
    daemon.start()
    figures = {}
    try:
        session = requests.Session()
        cases = {
            "no filter (all)": {},
            "limit=100": {"limit": 100},
            "partition=compute": {"partition": "compute"},
            "q=variant 2": {"q": "variant 2"},
            "app=solver&type=viz": {"app": "solver", "type": "viz"},
        }
        for label, params in cases.items():
            timings = []
            for _ in range(requests_count):
                started = time.monotonic()
                answer = session.get(daemon.url + "/api/v2/apptainer/images", params=params,
                                     headers=headers, timeout=30)
                answer.raise_for_status()
                timings.append(time.monotonic() - started)
            etag = answer.headers["ETag"]
            started = time.monotonic()
            revalidated = session.get(daemon.url + "/api/v2/apptainer/images", params=params,
                                      headers={**headers, "If-None-Match": etag}, timeout=30)
            figures[label] = (timings, answer.json()["total"], len(answer.content),
                              revalidated.status_code, time.monotonic() - started)
        return figures
    finally:
        daemon.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    ensure_test_users()
    headers = auth_headers("alice")
    tree = SharedTree()
    staging = tempfile.mkdtemp(prefix="bench-staging-")
    try:
        print(f"generating {args.images} images in {tree.images} ...", flush=True)
        sample = generate(tree.images, args.images, staging)
        full, full_seconds, again, rescan_seconds = scan_times(tree)
        print(f"full scan:    {len(full.added)} added in {full_seconds:.2f} s "
              f"({full_seconds / max(1, len(full.added)) * 1000:.2f} ms per image)")
        print(f"rescan:       {again.unchanged} unchanged, {len(again.updated)} re-read in "
              f"{rescan_seconds:.3f} s")
        for watcher in ("inotify", "poll"):
            latencies = drop_latency(tree, watcher, sample, args.drops, headers)
            print(f"drop->visible ({watcher:7s}, settle {SETTLE}s"
                  f"{', poll ' + str(POLL) + 's' if watcher == 'poll' else ''}): "
                  f"median {statistics.median(latencies) * 1000:.0f} ms, "
                  f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms over {len(latencies)} drops")
        for label, (timings, total, size, status, revalidate) in list_latency(
                tree, args.requests, headers).items():
            print(f"list {label:24s}: p50 {percentile(timings, 0.5) * 1000:6.1f} ms, "
                  f"p99 {percentile(timings, 0.99) * 1000:6.1f} ms  "
                  f"(total {total}, {size / 1024:.0f} KiB; If-None-Match -> {status} "
                  f"in {revalidate * 1000:.1f} ms)")
    finally:
        tree.cleanup()
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
