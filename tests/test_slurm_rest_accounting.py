"""Accounting through slurmrestd's ``/slurmdb/`` API: the final state of a job Slurm's
controller forgot and a user's associations come from slurmdbd with no Slurm command
on the head; a slurmrestd without the ``openapi/dbv0.0.38`` plugin degrades to what
the head's commands can tell, as before."""

import datetime
import os
import subprocess
from collections import namedtuple

import pytest
from support.accounting import (accounting_slurm_conf, plain_rest, plain_slurm_conf,  # noqa: F401
                                slurmdb_rest)
from support.slurm import jobs_config, slurm_conf, wait_finished  # noqa: F401
from support.waiting import wait_for

from hpcportal.slurm.rest import ApiV0038, SlurmRest, TokenSigner
from hpcportal.slurm.restbackend import RestBackend

SUBMIT = "/api/slurm/jobs/submit"
ACCOUNT = "portal-test-acct"
User = namedtuple("User", "name")


def _empty_bin(shared_dir):
    folder = os.path.join(shared_dir.root, "no-slurm-commands")
    os.makedirs(folder, mode=0o755, exist_ok=True)
    return folder


def _backend(url, key_file):
    # No command backend at all: whatever this answers came from slurmrestd.
    return RestBackend(SlurmRest(url, TokenSigner.from_file(key_file)))


def _sacctmgr(conf, *args):
    return subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLURM_CONF": conf})


@pytest.fixture()
def bob_association(slurmdb_rest):
    """bob in an account of his own with two QOS (set up with sacctmgr, removed after)."""
    conf = slurmdb_rest[0]
    _sacctmgr(conf, "add", "qos", "portal-fast")
    made = _sacctmgr(conf, "add", "account", ACCOUNT, "Description=test", "Organization=test")
    assert made.returncode == 0 or "already exists" in made.stdout + made.stderr, made.stderr
    made = _sacctmgr(conf, "add", "user", "bob", f"account={ACCOUNT}", "qos=normal,portal-fast",
                     "defaultqos=portal-fast")
    assert made.returncode == 0 or "already exists" in made.stdout + made.stderr, made.stderr
    yield
    _sacctmgr(conf, "delete", "user", "bob", f"account={ACCOUNT}")
    _sacctmgr(conf, "delete", "account", ACCOUNT)
    _sacctmgr(conf, "delete", "qos", "portal-fast")


def _release_22_05(conf):
    answer = subprocess.run(["scontrol", "--version"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "SLURM_CONF": conf})
    return answer.stdout.split()[-1].startswith("22.05")


@pytest.mark.slurm
@pytest.mark.databases("sqlite")
def test_finished_jobs_and_associations_come_from_slurmdbd_without_commands(
        daemon_factory, shared_dir, slurmdb_rest, bob_association):
    conf, url, key_file = slurmdb_rest
    daemon = daemon_factory(jobs_config(shared_dir, conf, bin_dir=_empty_bin(shared_dir),
                                        backend="rest", rest_url=url, jwt_key_file=key_file))
    ids = {}
    for name, script in (("ok", "#!/bin/bash\ntrue\n"), ("결과 파일", "#!/bin/bash\nexit 3\n")):
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": name, "script": script})
        assert answer.status_code == 200, answer.text
        ids[name] = answer.json()["jobId"]
    assert wait_finished(daemon, "alice", ids["ok"])["state"] == "COMPLETED"
    assert wait_finished(daemon, "alice", ids["결과 파일"])["state"] == "FAILED"

    # What the monitor asks for a job slurmctld has forgotten, asked of slurmdbd (its
    # record shows up a moment after the controller's).
    backend = _backend(url, key_file)
    wanted = [ids["ok"], ids["결과 파일"], "999999"]
    finished = wait_for(lambda: (lambda f: f if len(f) == 2 else None)(backend.finished(wanted)),
                        timeout=30, message="slurmdbd's records of both jobs")
    ok, failed = finished[ids["ok"]], finished[ids["결과 파일"]]
    assert ok["state"] == "COMPLETED" and ok["exit_code"] == "0:0" and ok["nodes"] == "localhost"
    assert isinstance(ok["started_at"], datetime.datetime) and ok["ended_at"] >= ok["started_at"]
    assert failed["state"] == "FAILED"
    # Slurm 22.05's v0.0.38 reports every exit code as 0: unknown beats a wrong "0:0".
    assert failed["exit_code"] == (None if _release_22_05(conf) else "3:0")

    mine = daemon.get("/api/slurm/associations", user="bob")
    assert mine.status_code == 200, mine.text
    assert mine.json()["accounts"] == [ACCOUNT] and mine.json()["qos"] == ["normal", "portal-fast"]
    [entry] = [a for a in mine.json()["associations"] if a["account"] == ACCOUNT]
    assert entry["default_qos"] == "portal-fast" and entry["partition"] is None and "note" not in mine.json()
    none = daemon.get("/api/slurm/associations", user="alice").json()
    assert none["associations"] == [] and "no Slurm associations" in none["note"]

    metrics = daemon.get("/metrics").text
    assert "hpcportal_slurm_calls_total{" not in metrics  # not one command run or tried
    assert 'hpcportal_slurm_rest_calls_total{call="GET db associations",outcome="200"}' in metrics


@pytest.mark.slurm
@pytest.mark.databases("sqlite")
def test_without_the_slurmdb_plugin_accounting_degrades_as_before(daemon_factory, shared_dir, plain_rest):
    conf, url, key_file = plain_rest
    backend = _backend(url, key_file)
    assert backend.rest._request("GET", "/slurmdb/v0.0.38/jobs", "root")[0] == 404
    assert backend.finished(["1"]) == {}
    daemon = daemon_factory(jobs_config(shared_dir, conf, bin_dir=_empty_bin(shared_dir), backend="rest",
                                        rest_url=url, jwt_key_file=key_file))
    answer = daemon.get("/api/slurm/associations", user="alice")
    assert answer.status_code == 200, answer.text
    assert answer.json()["associations"] == [] and "cannot be read on this head" in answer.json()["note"]
    # With the commands on the head, sacctmgr answers instead (no slurmdbd here: it says so).
    items, note = RestBackend(backend.rest, accounting=_commands(conf)).associations(User("alice"))
    assert items == [] and "accounting is not configured" in note


def _commands(conf):
    from hpcportal.slurm.client import CommandBackend
    from hpcportal.slurm.runner import SlurmRunner
    return CommandBackend(SlurmRunner("/usr/bin", conf, 30))


@pytest.mark.unit
def test_slurmdb_answers_take_the_shapes_of_the_commands():
    api = ApiV0038()
    record = {"job_id": 7, "state": {"current": "CANCELLED", "reason": "None"}, "nodes": "None assigned",
              "time": {"start": 0, "end": 1796356010}, "exit_code": {"status": "SUCCESS", "return_code": 0}}
    assert api.finished_job(record) == {"state": "CANCELLED", "exit_code": "0:0", "started_at": None,
                                        "ended_at": datetime.datetime(2026, 12, 4, 3, 46, 50), "nodes": None}
    failed = {**record, "state": {"current": "FAILED"}, "nodes": "localhost"}
    assert api.finished_job(failed)["exit_code"] is None and api.finished_job(failed)["nodes"] == "localhost"
    signalled = {**failed, "exit_code": {"status": "SIGNALED", "return_code": 0, "signal": {"signal_id": 9}}}
    assert api.finished_job(signalled)["exit_code"] == "0:9"
    assert api.db_jobs_query(["12", "13"]) == "jobs?skip_steps=true&step=12%2C13"
    assert api.association({"cluster": "c", "account": "a", "partition": None, "qos": ["normal", "fast"],
                            "default": {"qos": "fast"}, "user": "bob"}) == {
        "cluster": "c", "account": "a", "partition": None, "qos": ["fast", "normal"], "default_qos": "fast"}
