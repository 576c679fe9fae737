"""Usage over time, efficiency and a user's usage, from real jobs that burn CPU and
memory on a Slurm cluster with accounting (slurmdbd, jobacct_gather/linux)."""

import datetime
import os

import peewee
import pytest

from hpcportal.jobs.usage import UsageSampler
from hpcportal.models.usage import ServiceLease
from support.accounting import accounting_slurm_conf, plain_slurm_conf  # noqa: F401
from support.slurm import jobs_config, slurm_conf, wait_finished  # noqa: F401
from support.waiting import wait_for

SUBMIT = "/api/slurm/jobs/submit"
MIB = 1024 * 1024
# Holds 200 MiB (every page written) and keeps one CPU busy for 15 seconds.
BURN = """#!/usr/bin/env python3
import time
held = bytearray(b"\\x01") * (200 * 1024 * 1024)
end = time.time() + 15
while time.time() < end:
    pass
print("burned", len(held))
"""

pytestmark = [pytest.mark.slurm, pytest.mark.databases("sqlite")]


def test_samples_and_efficiency_follow_what_the_job_did(daemon_factory, shared_dir, accounting_slurm_conf):
    config = jobs_config(shared_dir, accounting_slurm_conf)
    config["jobs"].update(usage_interval="2s")
    daemon = daemon_factory(config)
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "burn 결과", "script": BURN, "cpus": 1,
                                                     "memory": "1G", "time": 10})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]

    def sampled():
        usage = daemon.get(f"/api/slurm/jobs/{job_id}/usage", user="alice").json()
        busy = [s for s in usage["samples"] if s["memoryBytes"] >= 150 * MIB and (s["cpuPercent"] or 0) > 5]
        return usage if len(busy) >= 2 and usage["state"] == "RUNNING" else None
    running = wait_for(sampled, timeout=60, message="samples of the running job")
    started = daemon.get(f"/api/slurm/jobs/{job_id}", user="alice").json()["started_at"]
    first = datetime.datetime.fromisoformat(running["samples"][0]["time"].rstrip("Z"))
    # Within one interval of the start (2 s), with room for a busy machine's squeue and sstat.
    assert first - datetime.datetime.fromisoformat(started.rstrip("Z")) <= datetime.timedelta(seconds=15)
    assert running["efficiency"] is None
    assert running["requested"] == {"cpus": 1, "memoryBytes": 1024 * MIB, "timeSeconds": 600}
    assert running["used"]["maxMemoryBytes"] >= 150 * MIB and running["used"]["elapsedSeconds"] >= 1
    assert all(s["memoryBytes"] < 600 * MIB and (s["cpuPercent"] is None or s["cpuPercent"] <= 150)
               for s in running["samples"])
    assert daemon.get(f"/api/slurm/jobs/{job_id}/usage", user="bob").status_code == 404

    assert wait_finished(daemon, "alice", job_id, timeout=120)["state"] == "COMPLETED"
    done = wait_for(lambda: (lambda u: u if u["efficiency"] else None)(
        daemon.get(f"/api/slurm/jobs/{job_id}/usage", user="alice").json()), timeout=30,
        message="accounting's record of the finished job")
    used, efficiency = done["used"], done["efficiency"]
    assert 15 <= used["elapsedSeconds"] <= 90
    # A shared two-core machine may give the loop less than a whole CPU: generous bounds.
    assert 1 <= used["cpuSeconds"] <= used["elapsedSeconds"] + 2
    assert 0.05 <= efficiency["cpu"] <= 1.05
    assert 150 * MIB <= used["maxMemoryBytes"] <= 600 * MIB
    assert 0.14 <= efficiency["memory"] <= 0.6
    assert efficiency["time"] == pytest.approx(used["elapsedSeconds"] / 600)

    mine = daemon.get("/api/v2/me/usage", user="alice", params={"days": 1}).json()
    assert mine["accounting"] is True and mine["total"]["jobs"] >= 1
    compute = next(p for p in mine["partitions"] if p["partition"] == "compute")
    assert compute["cpuSeconds"] >= used["elapsedSeconds"]  # CPUTimeRAW: elapsed x allocated CPUs
    assert compute["cpuHours"] == compute["cpuSeconds"] / 3600 and compute["gpuHours"] == 0
    assert daemon.get("/api/v2/me/usage", user="bob", params={"user": "alice"}).status_code == 403
    everyone = daemon.get("/api/v2/me/usage", user="bob", admin=True, params={"all": "true", "days": 1}).json()
    assert everyone["total"]["jobs"] >= mine["total"]["jobs"]
    assert daemon.get("/api/v2/me/usage", user="alice", params={"days": 0}).status_code == 400


def test_without_accounting_the_answers_say_so(daemon_factory, shared_dir, plain_slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, plain_slurm_conf))
    job_id = daemon.post(SUBMIT, user="alice", json={"jobName": "quick", "script": "true", "time": 5}).json()["jobId"]
    wait_finished(daemon, "alice", job_id)
    usage = daemon.get(f"/api/slurm/jobs/{job_id}/usage", user="alice").json()
    assert "accounting is not configured" in usage["note"] and usage["efficiency"] is None
    assert usage["requested"]["cpus"] == 1
    mine = daemon.get("/api/v2/me/usage", user="alice").json()
    assert mine["accounting"] is False and "accounting is not configured" in mine["note"]
    assert mine["total"]["jobs"] >= 1  # what the controller still knows


def test_one_head_samples_and_a_dead_heads_lease_is_taken_over(tmp_path):
    database = peewee.SqliteDatabase(str(tmp_path / "lease.db"))
    ServiceLease.bind(database)
    database.create_tables([ServiceLease])
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    first = UsageSampler(None, None, database, interval=30, max_jobs=500, retention=86400)
    second = UsageSampler(None, None, database, interval=30, max_jobs=500, retention=86400)
    assert first._take_lease(now) and not second._take_lease(now)
    assert first._take_lease(now + datetime.timedelta(seconds=60))  # renewed while it lives
    # The first head died: its lease runs out, and the second takes it.
    assert not second._take_lease(now + datetime.timedelta(seconds=100))
    assert second._take_lease(now + datetime.timedelta(seconds=151))
    assert not first._take_lease(now + datetime.timedelta(seconds=152))


def test_a_head_with_slurmrestd_only_takes_no_samples_and_says_why(daemon_factory, shared_dir, slurm_conf):
    from support.backends import rest_settings
    no_commands = os.path.join(shared_dir.root, "no-slurm-commands")
    os.makedirs(no_commands)
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, bin_dir=no_commands, **rest_settings()))
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "rest only", "script": "true", "time": 5})
    assert answer.status_code == 200, answer.text
    usage = daemon.get(f"/api/slurm/jobs/{answer.json()['jobId']}/usage", user="alice")
    assert usage.status_code == 200, usage.text
    assert usage.json()["samples"] == [] and "slurmrestd" in usage.json()["note"]
    assert usage.json()["requested"]["cpus"] == 1
