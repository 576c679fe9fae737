#!/usr/bin/env python3
"""Job submission through the API against plain sbatch, and the job list under load.

Starts the local Slurm (scripts/dev-slurm, unless $SLURM_CONF is set) and a real
daemon, then, interleaved so both see the same cluster state:
- ``--count`` (50) submissions through ``POST /api/slurm/jobs/submit`` as alice;
- ``--count`` plain ``sbatch`` calls by alice (same uid/gid/groups, clean
  environment) of an equivalent batch script in a folder of hers.
Then ``--requests`` (200) concurrent ``GET /api/slurm/jobs`` while the jobs
run. Prints per-submit latency (median, p95), the API/sbatch ratio (target
<= 1.15), the floor any API call has (one bare HTTP round trip) and how many squeue calls the list load cost (bounded by the shared
cache, not by the number of requests). Needs root (jobs run as alice).

    .venv/bin/python bench/submit.py [--count 50] [--requests 200] [--concurrency 20]
"""

import argparse
import concurrent.futures
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "daemon"))

import requests  # noqa: E402

from support.daemon import Daemon, SharedTree, auth_headers  # noqa: E402
from support.slurm import jobs_config, start_cluster  # noqa: E402
from support.users import ensure_test_users  # noqa: E402

SCRIPT = "#!/bin/bash\nsleep 20\n"


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def squeue_calls(daemon):
    text = requests.get(daemon.url + "/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(r'hpcportal_slurm_calls_total\{command="squeue",outcome="[a-z]+"\} (\S+)',
                                            text))


def plain_sbatch(alice, folder, conf, index):
    """sbatch by alice herself, the way a login-node user would (clean env, her ids)."""
    path = os.path.join(folder, f"plain-{index}.sbatch")
    with open(path, "w") as handle:
        handle.write("#!/bin/bash -l\n#SBATCH --job-name=plain\n#SBATCH --ntasks-per-node=1\n"
                     f"#SBATCH --output={folder}/slurm-%j.out\n#SBATCH --chdir={folder}\n"
                     "#SBATCH --export=NONE\n" + SCRIPT)
    os.chown(path, alice.pw_uid, alice.pw_gid)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": alice.pw_dir, "USER": "alice", "SLURM_CONF": conf}
    started = time.perf_counter()
    answer = subprocess.run(["sbatch", "--parsable", path], user=alice.pw_uid, group=alice.pw_gid,
                            extra_groups=[], env=env, cwd=folder, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    return elapsed, answer.stdout.strip().split(";")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()

    users = ensure_test_users()
    alice = users["alice"]
    conf = os.environ.get("SLURM_CONF") or start_cluster()
    tree = SharedTree()
    config = jobs_config(tree, conf, squeue_interval="2s", poll_interval="10s")
    config["security"] = {"rate_limits": {"submit": 0}}  # the benchmark is a burst by design
    daemon = Daemon(tree, config=config)
    daemon.start()
    folder = tempfile.mkdtemp(prefix="plain-", dir=tree.root)
    os.chown(folder, alice.pw_uid, alice.pw_gid)
    session = requests.Session()
    headers = auth_headers("alice")
    job_ids = []
    try:
        # Warm-up: the partition cache and the first sbatch of a fresh cluster.
        session.post(daemon.url + "/api/slurm/jobs/submit", headers=headers,
                     json={"jobName": "warmup", "script": SCRIPT}, timeout=60).raise_for_status()
        plain_sbatch(alice, folder, conf, "warmup")
        api, plain = [], []
        for index in range(args.count):
            started = time.perf_counter()
            answer = session.post(daemon.url + "/api/slurm/jobs/submit", headers=headers,
                                  json={"jobName": f"bench-{index}", "cpus": 1, "script": SCRIPT}, timeout=60)
            api.append(time.perf_counter() - started)
            answer.raise_for_status()
            job_ids.append(answer.json()["jobId"])
            elapsed, job_id = plain_sbatch(alice, folder, conf, index)
            plain.append(elapsed)
            job_ids.append(job_id)

        # The floor of any API call: one HTTP round trip to this daemon that does
        # nothing (no token, no database), measured with the same client.
        round_trips = []
        for _ in range(args.count):
            started = time.perf_counter()
            session.get(daemon.url + "/healthz", timeout=10).raise_for_status()
            round_trips.append(time.perf_counter() - started)

        before = squeue_calls(daemon)
        started = time.perf_counter()

        def list_jobs(_):
            return requests.get(daemon.url + "/api/slurm/jobs", headers=headers, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            statuses = list(pool.map(list_jobs, range(args.requests)))
        list_seconds = time.perf_counter() - started
        calls = squeue_calls(daemon) - before

        ms = lambda seconds: seconds * 1000  # noqa: E731
        print(f"submissions: {args.count} through the API, {args.count} plain sbatch (interleaved)")
        print(f"  API    median {ms(statistics.median(api)):7.1f} ms   p95 {ms(percentile(api, .95)):7.1f} ms")
        print(f"  sbatch median {ms(statistics.median(plain)):7.1f} ms   p95 {ms(percentile(plain, .95)):7.1f} ms")
        ratio = statistics.median(api) / statistics.median(plain)
        print(f"  API/sbatch ratio (medians): {ratio:.2f} (target <= 1.15)")
        floor = statistics.median(round_trips)
        print(f"  bare HTTP round trip (GET /healthz) median {ms(floor):.1f} ms: sbatch plus that alone "
              f"would be {(statistics.median(plain) + floor) / statistics.median(plain):.2f} of sbatch")
        print(f"job list: {args.requests} requests, {args.concurrency} at a time, in {list_seconds:.1f} s; "
              f"statuses {sorted(set(statuses))}")
        print(f"  squeue calls during the list load: {calls:.0f} "
              f"(one per squeue_interval at most, whatever the number of requests)")
    finally:
        subprocess.run(["scancel", *job_ids], env={**os.environ, "SLURM_CONF": conf}, check=False,
                       capture_output=True)
        daemon.stop()
        tree.cleanup()


if __name__ == "__main__":
    main()
