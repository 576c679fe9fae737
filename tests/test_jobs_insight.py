"""Job insight against the real local Slurm: dependencies and arrays at submit, what a
job waits for, each array task, and the graph of a user's connected jobs."""

import os
import subprocess

import pytest

from support.slurm import jobs_config, slurm_conf, wait_finished  # noqa: F401
from support.waiting import wait_for

SUBMIT = "/api/slurm/jobs/submit"

pytestmark = [pytest.mark.slurm, pytest.mark.databases("sqlite")]

TEMPLATE = """\
name: Sweep
version: "1.0.0"
slurm:
  time: {default: "00:05:00"}
  array: {default: "0-2"}
  dependency: singleton
script: |
  echo "task=$SLURM_ARRAY_TASK_ID"
"""


def scontrol(conf, job_id):
    answer = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                            env={**os.environ, "SLURM_CONF": conf}, check=True)
    return answer.stdout


@pytest.fixture
def daemon(daemon_factory, shared_dir, slurm_conf):
    return daemon_factory(jobs_config(shared_dir, slurm_conf))


def test_dependency_and_array_reach_slurm_and_bad_ones_name_their_field(daemon, slurm_conf):
    first = daemon.post(SUBMIT, user="alice", json={"jobName": "first", "script": "sleep 4", "time": 5})
    assert first.status_code == 200, first.text
    first_id = first.json()["jobId"]

    bad = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": "true",
                                                  "dependency": f"afterok:{first_id};true", "array": "0-1001"})
    assert bad.status_code == 400, bad.text
    assert set(bad.json()["errors"]) == {"dependency", "array"}
    assert "jobs.max_array_size" in bad.json()["errors"]["array"]
    wrong_type = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": "true", "dependency": 5})
    assert wrong_type.status_code == 400 and "dependency" in wrong_type.json()["errors"]
    in_script = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": "#SBATCH --array=0-5000\ntrue"})
    assert in_script.status_code == 400 and "array" in in_script.json()["errors"], in_script.text

    second = daemon.post(SUBMIT, user="alice", json={
        "jobName": "결과 파일", "script": "echo task=$SLURM_ARRAY_TASK_ID", "time": 5,
        "dependency": f"afterok:{first_id}", "array": "0-2%2"})
    assert second.status_code == 200, second.text
    second_id = second.json()["jobId"]
    shown = scontrol(slurm_conf, second_id)
    assert f"Dependency=afterok:{first_id}" in shown and "ArrayTaskId=0-2%2" in shown, shown
    finished = wait_finished(daemon, "alice", second_id, timeout=120)
    assert "#SBATCH --array=0-2%2\n" in finished["script"]
    assert f"#SBATCH --dependency=afterok:{first_id}\n" in finished["script"]
    assert finished["dependency"] == f"afterok:{first_id}"


def test_a_template_sets_an_array_and_a_request_its_dependency(daemon, shared_dir, slurm_conf):
    with open(os.path.join(shared_dir.templates, "official", "sweep.yaml"), "w") as handle:
        handle.write(TEMPLATE)
    wait_for(lambda: daemon.get("/api/v2/templates/official.sweep", user="alice").status_code == 200,
             message="the template in the catalog")
    refused = daemon.post(SUBMIT, user="alice", json={"templateId": "official.sweep", "dependency": "afterok:"})
    assert refused.status_code == 400 and "dependency" in refused.json()["errors"], refused.text
    answer = daemon.post(SUBMIT, user="alice", json={"templateId": "official.sweep", "array": "1-2"})
    assert answer.status_code == 200, answer.text
    shown = scontrol(slurm_conf, answer.json()["jobId"])
    assert "Dependency=singleton" in shown or "Dependency=(null)" in shown
    assert "ArrayJobId=" in shown
    finished = wait_finished(daemon, "alice", answer.json()["jobId"], timeout=120)
    assert "#SBATCH --array=1-2\n" in finished["script"] and "#SBATCH --dependency=singleton\n" in finished["script"]
