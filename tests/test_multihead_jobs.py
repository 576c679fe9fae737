"""A job submitted through one head is listed, followed and cancelled through
the other (one MariaDB, one shared folder, the local Slurm cluster)."""

import functools
import json
import os
import subprocess

import pytest
import requests

from support.waiting import wait_for
from support.daemon import REPO, auth_headers

# Both heads talk to Slurm through the commands, then both through slurmrestd.
pytestmark = [pytest.mark.databases("mariadb", "postgres"), pytest.mark.slurm, pytest.mark.slurm_backends("cli", "rest")]

WAIT = 90

SCRIPT = "#!/bin/bash\necho started on $(hostname)\nfor i in $(seq 600); do echo tick $i; sleep 1; done\n"


@pytest.fixture(scope="module")
def slurm_conf():
    answer = subprocess.run([os.path.join(REPO, "scripts", "dev-slurm"), "start"],
                            capture_output=True, text=True, timeout=600)
    assert answer.returncode == 0, answer.stderr
    line = next(line for line in answer.stdout.splitlines() if "SLURM_CONF=" in line)
    return line.split("=", 1)[1].strip().strip("'\"")


@pytest.fixture
def heads(daemon_factory, slurm_conf):
    # Only the portal's own jobs: the shared cluster holds alice's jobs of other tests too.
    config = {"slurm": {"conf": slurm_conf, "poll_interval": "1s"}, "jobs": {"cluster_jobs": False}}
    return daemon_factory(config=config), daemon_factory(config=config)


wait_until = functools.partial(wait_for, timeout=WAIT, interval=0.3)



def _events(head, job_id, until):
    """Server-sent events of the job's stdout until ``until(event, data)`` is true."""
    seen = []
    with requests.get(f"{head.url}/api/slurm/jobs/{job_id}/output?stream=stdout", stream=True,
                      timeout=WAIT, headers={**auth_headers("alice"), "Accept": "text/event-stream"}) as answer:
        assert answer.status_code == 200, answer.text
        event = None
        for line in answer.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                seen.append((event, data))
                if until(event, data):
                    return seen
    return seen


def _state(head, job_id):
    jobs = head.get("/api/slurm/jobs", user="alice").json()["jobs"]
    return next((job["state"] for job in jobs if job["jobId"] == job_id), None)


def test_job_submitted_on_one_head_is_followed_and_cancelled_on_the_other(heads):
    a, b = heads
    submitted = a.post("/api/slurm/jobs/submit", user="alice", json={
        "jobName": "multihead", "partition": "compute", "nodes": 1, "cpus": 1,
        "memory": "100MB", "time": "00:10:00", "script": SCRIPT, "jobId": "tmp-1"})
    assert submitted.status_code == 200, submitted.text
    job_id = submitted.json()["jobId"]

    listed = b.get("/api/slurm/jobs", user="alice").json()["jobs"]
    assert [job["jobId"] for job in listed] == [job_id]
    assert b.get(f"/api/slurm/jobs/{job_id}", user="alice").json()["name"] == "multihead"

    output = _events(b, job_id, until=lambda event, data: "tick 2" in data.get("data", ""))
    text = "".join(data.get("data", "") for event, data in output if event == "output")
    assert "started on" in text and "tick 2" in text

    cancelled = b.delete(f"/api/slurm/jobs/{job_id}", user="alice")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["success"] is True

    wait_until(lambda: _state(a, job_id) == "CANCELLED", message="CANCELLED on the other head")
    ending = _events(a, job_id, until=lambda event, data: event == "end")
    assert ending[-1] == ("end", {"state": "CANCELLED", "next_offset": ending[-1][1]["next_offset"]})
