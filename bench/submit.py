#!/usr/bin/env python3
"""Job submission through the API (REST and command backends) against plain sbatch.

Starts the local Slurm (scripts/dev-slurm, unless $SLURM_CONF is set) and two real
daemons on one shared tree: one with ``slurm.backend: rest`` (slurmrestd, from
$SLURM_REST_URL and $SLURM_JWT_KEY_FILE as scripts/dev-slurm prints them), one with
``slurm.backend: cli`` (Slurm's commands). Then, interleaved so all three see the
same cluster state, ``--count`` (50) rounds of:
- a plain ``sbatch`` by alice (her uid, gid and groups, a clean environment) of an
  equivalent batch script in a folder of hers: the baseline;
- ``POST /api/slurm/jobs/submit`` as alice to the REST daemon;
- the same to the command daemon;
- a bare slurmrestd submit as alice (the daemon's own REST client, no portal around
  it): what the REST backend costs before the portal's own work.
Then ``--requests`` (200) concurrent ``GET /api/slurm/jobs`` to each daemon while
the jobs run, counting the Slurm commands each daemon ran meanwhile. Prints medians,
p95, the ratios to plain sbatch (targets: REST <= 0.6, commands <= 1.3) and the
floor of any API call (one bare HTTP round trip). Needs root (jobs run as alice).

    .venv/bin/python bench/submit.py [--count 50] [--requests 200] [--concurrency 20]
"""

import argparse
import concurrent.futures
import http.client
import json
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

from hpcportal.slurm.rest import SlurmRest, TokenSigner  # noqa: E402

SCRIPT = "#!/bin/bash\nsleep 20\n"
TARGETS = {"rest": 0.6, "cli": 1.3}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def slurm_commands(daemon):
    """How many Slurm commands the daemon has run, all commands and outcomes together."""
    text = requests.get(daemon.url + "/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(r'^hpcportal_slurm_calls_total\{[^}]*\} (\S+)', text, re.MULTILINE))


def plain_sbatch(alice, folder, conf, index, after=None):
    """sbatch by alice herself, the way a login-node user would (clean env, her ids)."""
    path = os.path.join(folder, f"plain-{index}.sbatch")
    with open(path, "w") as handle:
        handle.write("#!/bin/bash -l\n#SBATCH --job-name=plain\n#SBATCH --ntasks-per-node=1\n"
                     f"#SBATCH --output={folder}/slurm-%j.out\n#SBATCH --chdir={folder}\n"
                     + (f"#SBATCH --dependency={after}\n" if after else "")
                     + "#SBATCH --export=NONE\n" + SCRIPT)
    os.chown(path, alice.pw_uid, alice.pw_gid)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": alice.pw_dir, "USER": "alice", "SLURM_CONF": conf}
    started = time.perf_counter()
    answer = subprocess.run(["sbatch", "--parsable", path], user=alice.pw_uid, group=alice.pw_gid,
                            extra_groups=[], env=env, cwd=folder, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    return elapsed, answer.stdout.strip().split(";")[0]


def bare_rest_submit(rest, folder, index, after=None):
    """slurmrestd alone: the same job as the plain sbatch, described as the REST API takes it."""
    job = {"name": "bare", "current_working_directory": folder, "standard_output": f"{folder}/bare-%j.out",
           "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"}, "tasks_per_node": 1,
           **({"dependency": after} if after else {})}
    started = time.perf_counter()
    job_id = rest.submit("alice", job, SCRIPT)
    return time.perf_counter() - started, str(job_id)


class ApiSubmitter:
    """The dashboard's side of a submission: one kept-alive HTTP connection, as a
    browser keeps one, and the standard library's client (a browser's own costs
    nothing in Python; ``requests`` added some 0.3 ms of the bench's own)."""

    def __init__(self, daemon, after=None):
        self.daemon = daemon
        self.after = after
        self.connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
        self.headers = {**auth_headers("alice"), "Content-Type": "application/json"}

    def submit(self, index):
        body = {"jobName": f"bench-{index}", "cpus": 1, "script": SCRIPT}
        body = json.dumps({**body, "dependency": self.after} if self.after else body).encode()
        started = time.perf_counter()
        self.connection.request("POST", "/api/slurm/jobs/submit", body=body, headers=self.headers)
        answer = self.connection.getresponse()
        data = answer.read()
        elapsed = time.perf_counter() - started
        if answer.status != 200:
            raise SystemExit(f"submit failed: {answer.status} {data[:500]!r}")
        return elapsed, json.loads(data)["jobId"]

    def round_trip(self):
        started = time.perf_counter()
        self.connection.request("GET", "/healthz")
        answer = self.connection.getresponse()
        answer.read()
        elapsed = time.perf_counter() - started
        if answer.status != 200:
            raise SystemExit(f"/healthz answered {answer.status}")
        return elapsed

    def list_load(self, requests_count, concurrency):
        """``(seconds, statuses, Slurm commands run meanwhile)``."""
        before = slurm_commands(self.daemon)
        started = time.perf_counter()

        def list_jobs(_):
            return requests.get(self.daemon.url + "/api/slurm/jobs", headers=self.headers, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(list_jobs, range(requests_count)))
        return time.perf_counter() - started, sorted(set(statuses)), slurm_commands(self.daemon) - before


def daemon_for(tree, conf, backend, rest_url, key_file):
    config = jobs_config(tree, conf, squeue_interval="2s", poll_interval="10s", backend=backend,
                         rest_url=rest_url, jwt_key_file=key_file)
    config["security"] = {"rate_limits": {"submit": 0}}  # the benchmark is a burst by design
    daemon = Daemon(tree, config=config)
    daemon.start()
    ready = requests.get(daemon.url + "/readyz", timeout=10).json()
    return daemon, ready


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--start-jobs", action="store_true",
                        help="let each job start as soon as it is submitted (here, beside the timing)")
    args = parser.parse_args()

    users = ensure_test_users()
    alice = users["alice"]
    conf = os.environ.get("SLURM_CONF") or start_cluster()
    rest_url, key_file = os.environ.get("SLURM_REST_URL"), os.environ.get("SLURM_JWT_KEY_FILE")
    if not (rest_url and key_file):
        raise SystemExit("SLURM_REST_URL and SLURM_JWT_KEY_FILE are not set: "
                         'run eval "$(scripts/dev-slurm start)" first')
    tree = SharedTree()
    daemons, job_ids = [], []
    try:
        for backend in ("rest", "cli"):
            daemon, ready = daemon_for(tree, conf, backend, rest_url, key_file)
            daemons.append(daemon)
            print(f"{backend} daemon: /readyz says {ready.get('checks', {}).get('slurm', ready)}")
        folder = tempfile.mkdtemp(prefix="plain-", dir=tree.root)
        os.chown(folder, alice.pw_uid, alice.pw_gid)
        after = None
        if not args.start_jobs:
            # Every measured job waits for a held one: on a cluster the jobs run on compute
            # nodes, and here starting them would load the two cores the timing runs on.
            held = subprocess.run(["sbatch", "--parsable", "--hold", f"--chdir={folder}", "--output=/dev/null",
                                   "--wrap", "true"], user=alice.pw_uid, group=alice.pw_gid, extra_groups=[],
                                  env={"PATH": "/usr/bin:/bin", "SLURM_CONF": conf}, capture_output=True,
                                  text=True, check=True).stdout.strip().split(";")[0]
            job_ids.append(held)
            after = f"afterok:{held}"
        apis = {"rest": ApiSubmitter(daemons[0], after), "cli": ApiSubmitter(daemons[1], after)}

        # Warm-up: partition caches, the connection pool, the first sbatch of a fresh cluster.
        for api in apis.values():
            job_ids.append(api.submit("warmup")[1])
        job_ids.append(plain_sbatch(alice, folder, conf, "warmup")[1])

        rest = SlurmRest(rest_url, TokenSigner.from_file(key_file))
        job_ids.append(bare_rest_submit(rest, folder, "warmup")[1])
        times = {"sbatch": [], "rest": [], "cli": [], "bare": []}
        for index in range(args.count):
            # Rotate the order so none of the four always follows the same one.
            order = [("sbatch", None), ("rest", apis["rest"]), ("cli", apis["cli"]), ("bare", None)]
            order = order[index % 4:] + order[:index % 4]
            for name, api in order:
                if name == "sbatch":
                    elapsed, job_id = plain_sbatch(alice, folder, conf, index, after)
                elif name == "bare":
                    elapsed, job_id = bare_rest_submit(rest, folder, index, after)
                else:
                    elapsed, job_id = api.submit(index)
                times[name].append(elapsed)
                job_ids.append(job_id)
        round_trips = [apis["cli"].round_trip() for _ in range(args.count)]

        ms = lambda seconds: seconds * 1000  # noqa: E731
        plain = statistics.median(times["sbatch"])
        print(f"submissions: {args.count} rounds of plain sbatch, API (REST backend), API (command backend), "
              "bare slurmrestd, interleaved; " + ("each job started at once" if args.start_jobs else
                                                  f"every job waiting for held job {after.split(':')[1]}"))
        labels = {"sbatch": "plain sbatch", "rest": "API, REST", "cli": "API, commands", "bare": "bare slurmrestd"}
        for name in ("sbatch", "rest", "cli", "bare"):
            median = statistics.median(times[name])
            line = f"  {labels[name]:<15} median {ms(median):6.1f} ms   p95 {ms(percentile(times[name], .95)):6.1f} ms"
            if name in TARGETS:
                line += f"   ratio {median / plain:.2f} (target <= {TARGETS[name]})"
            elif name == "bare":
                line += f"   ratio {median / plain:.2f} (slurmrestd alone)"
            print(line)
        floor = statistics.median(round_trips)
        print(f"  bare HTTP round trip (GET /healthz) median {ms(floor):.1f} ms")
        for name in ("rest", "cli"):
            seconds, statuses, commands = apis[name].list_load(args.requests, args.concurrency)
            print(f"job list, {labels[name]}: {args.requests} requests, {args.concurrency} at a time, in "
                  f"{seconds:.1f} s; statuses {statuses}; Slurm commands run meanwhile: {commands:.0f}")
        print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        subprocess.run(["scancel", *job_ids], env={**os.environ, "SLURM_CONF": conf}, check=False,
                       capture_output=True)
        for daemon in daemons:
            daemon.stop()
        tree.cleanup()


if __name__ == "__main__":
    main()
