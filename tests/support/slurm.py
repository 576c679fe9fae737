"""The local Slurm for the jobs tests, and a stand-in for apptainer.

``slurm_conf`` (session fixture): the cluster's slurm.conf, from $SLURM_CONF
(``scripts/test`` starts the cluster and exports it) or by running
``scripts/dev-slurm start`` once. Tests that need Slurm are never skipped.
``controller(conf, "stop" | "start")`` stops or starts its slurmctld alone.

``APPTAINER_STANDIN``: a test-only stand-in for ``apptainer`` (no container
runtime is installed on the test machine). It prints one line recording its
arguments, ``APPTAINER-TEST-STANDIN args: ...``, then runs the command that
follows the image, like ``apptainer exec`` would inside the container.
"""

import os
import subprocess

import pytest
from support.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

APPTAINER_STANDIN = r"""#!/bin/bash
# TEST STAND-IN for apptainer (hpcportal tests): records its arguments, runs the command.
printf 'APPTAINER-TEST-STANDIN args:'
printf ' [%s]' "$@"
printf '\n'
[ "$1" = exec ] || { echo "stand-in: only exec is supported" >&2; exit 2; }
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nv|--cleanenv|--containall|--contain|--no-home|--writable-tmpfs) shift ;;
    --bind|-B|--app|--env|--pwd|--home) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
echo "APPTAINER-TEST-STANDIN image: $1"
shift
exec "$@"
"""


def start_cluster():
    answer = subprocess.run([os.path.join(REPO, "scripts", "dev-slurm"), "start"], capture_output=True,
                            text=True, timeout=900)
    if answer.returncode != 0:
        raise RuntimeError(f"scripts/dev-slurm start failed:\n{answer.stderr[-3000:]}")
    for line in answer.stdout.splitlines():
        if "SLURM_CONF=" in line:
            return line.split("SLURM_CONF=", 1)[1].strip().strip("'\"")
    raise RuntimeError(f"scripts/dev-slurm printed no SLURM_CONF: {answer.stdout!r}")


@pytest.fixture(scope="session")
def slurm_conf():
    conf = os.environ.get("SLURM_CONF")
    if conf and os.path.exists(conf):
        return conf
    return start_cluster()


def controller(conf, action):
    """``scripts/dev-slurm stop-controller|start-controller`` for the cluster of ``conf``:
    slurmctld alone stops or starts; slurmd and running jobs stay."""
    base = os.path.dirname(os.path.dirname(conf))
    if not os.path.exists(os.path.join(base, "run")):
        raise RuntimeError(f"{conf} is not a scripts/dev-slurm cluster")
    answer = subprocess.run([os.path.join(REPO, "scripts", "dev-slurm"), f"{action}-controller"],
                            env={**os.environ, "DEV_SLURM_DIR": base}, capture_output=True,
                            text=True, timeout=180)
    if answer.returncode != 0:
        raise RuntimeError(f"dev-slurm {action}-controller failed:\n{answer.stderr[-3000:]}")


def write_standin(folder):
    os.makedirs(folder, mode=0o755, exist_ok=True)
    path = os.path.join(folder, "apptainer-test-standin")
    with open(path, "w") as handle:
        handle.write(APPTAINER_STANDIN)
    os.chmod(path, 0o755)
    return path


def jobs_config(shared, slurm_conf, **slurm):
    """Daemon settings for the jobs tests: the local cluster, the stand-in, quick polling."""
    standin = write_standin(os.path.join(shared.root, "bin"))
    return {"slurm": {"conf": slurm_conf, "apptainer": standin, "poll_interval": "1s",
                      "squeue_interval": "1s", "data_roots": [shared.root, "~"], **slurm},
            # The shared test cluster holds thousands of the test users' jobs from other
            # tests: lists that count a test's own jobs show only the portal's.
            "jobs": {"cluster_jobs": False}}


def dead_controller_conf(shared, slurm_conf):
    """A copy of ``slurm_conf`` whose controller port nobody listens on: Slurm is down."""
    dead = os.path.join(shared.root, "dead-slurm.conf")
    with open(slurm_conf) as source, open(dead, "w") as target:
        target.write(source.read().replace("SlurmctldPort=6817", "SlurmctldPort=6999"))
    os.chmod(dead, 0o644)
    return dead





def job(daemon, user, job_id):
    answer = daemon.get(f"/api/slurm/jobs/{job_id}", user=user)
    assert answer.status_code == 200, answer.text
    return answer.json()


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def wait_finished(daemon, user, job_id, timeout=90):
    return wait_for(lambda: (lambda j: j if j["state"] in FINAL else None)(job(daemon, user, job_id)),
                    timeout=timeout, message=f"job {job_id} to end")


def output(daemon, user, job_id, stream="stdout"):
    answer = daemon.get(f"/api/slurm/jobs/{job_id}/output", user=user,
                        params={"stream": stream, "limit": 1000000})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def squeue_comments(slurm_conf):
    answer = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%k"], capture_output=True, text=True,
                            env={**os.environ, "SLURM_CONF": slurm_conf}, check=True)
    return dict(line.split("|", 1) for line in answer.stdout.splitlines() if "|" in line)
