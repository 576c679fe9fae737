"""Job insight against the real local Slurm: dependencies and arrays at submit, what a
job waits for, each array task, and the graph of a user's connected jobs."""

import os
import subprocess

import pytest

from support.slurm import jobs_config, slurm_conf  # noqa: F401
from support.waiting import wait_for

SUBMIT = "/api/slurm/jobs/submit"

# Each test runs through the commands and through slurmrestd.
pytestmark = [pytest.mark.slurm, pytest.mark.databases("sqlite"), pytest.mark.slurm_backends("cli", "rest")]

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


@pytest.mark.slurm_backends("cli", "rest")
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
    detail = daemon.get(f"/api/slurm/jobs/{second_id}", user="alice").json()
    assert "#SBATCH --array=0-2%2\n" in detail["script"]
    assert f"#SBATCH --dependency=afterok:{first_id}\n" in detail["script"]
    assert detail["dependency"] == f"afterok:{first_id}"
    for job_id in (second_id, first_id):  # nothing more to see: the shared cluster gets its CPUs back
        daemon.delete(f"/api/slurm/jobs/{job_id}", user="alice")


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
    detail = daemon.get(f"/api/slurm/jobs/{answer.json()['jobId']}", user="alice").json()
    assert "#SBATCH --array=1-2\n" in detail["script"] and "#SBATCH --dependency=singleton\n" in detail["script"]
    daemon.delete(f"/api/slurm/jobs/{answer.json()['jobId']}", user="alice")


def test_reasons_tasks_and_the_dependency_graph(daemon, slurm_conf):
    blocker = daemon.post(SUBMIT, user="alice", json={"jobName": "blocker", "script": "sleep 300", "time": 10})
    assert blocker.status_code == 200, blocker.text
    blocker_id = blocker.json()["jobId"]
    waiting = daemon.post(SUBMIT, user="alice", json={
        "jobName": "sweep", "script": "echo task=$SLURM_ARRAY_TASK_ID", "time": 5,
        "dependency": f"afterok:{blocker_id}", "array": "0-3"})
    waiting_id = waiting.json()["jobId"]
    after = daemon.post(SUBMIT, user="alice", json={
        "jobName": "after", "script": "true", "time": 5, "dependency": f"afterany:{waiting_id}"})
    after_id = after.json()["jobId"]

    def pending_on_blocker():
        job = daemon.get(f"/api/slurm/jobs/{waiting_id}", user="alice").json()
        return job if job["reason"] == "Dependency" else None
    job = wait_for(pending_on_blocker, message="the array to wait for its dependency")
    assert job["state"] == "PENDING" and job["source"] == "portal"
    assert job["reasonText"] == f"waiting for job {blocker_id} to finish successfully"
    assert job["dependency"] == f"afterok:{blocker_id}" and job["arrayJobId"] == waiting_id

    graph = daemon.get(f"/api/slurm/jobs/{after_id}/dependencies", user="alice")
    assert graph.status_code == 200, graph.text
    nodes = {n["jobId"]: n for n in graph.json()["nodes"]}
    assert {blocker_id, waiting_id, after_id} <= set(nodes)
    assert nodes[blocker_id]["name"] == "blocker" and nodes[after_id]["state"] == "PENDING"
    edges = {(e["from"], e["to"], e["type"]) for e in graph.json()["edges"]}
    assert (blocker_id, waiting_id, "afterok") in edges and (waiting_id, after_id, "afterany") in edges
    assert daemon.get(f"/api/slurm/jobs/{after_id}/dependencies", user="bob").status_code == 404

    assert daemon.delete(f"/api/slurm/jobs/{blocker_id}", user="alice").status_code == 200
    # afterok can no longer hold: Slurm says so, and so does the answer.
    assert daemon.delete(f"/api/slurm/jobs/{waiting_id}", user="alice").status_code == 200

    # An array whose tasks run: the list shows each task with its index, and each has its output.
    array = daemon.post(SUBMIT, user="alice", json={"jobName": "tasks", "time": 5, "array": "0-2",
                                                    "script": "echo task=$SLURM_ARRAY_TASK_ID"})
    array_id = array.json()["jobId"]

    def tasks_done():
        listed = daemon.get("/api/slurm/jobs", user="alice", params={"limit": 1000}).json()["jobs"]
        tasks = [j for j in listed if j["arrayJobId"] == array_id]
        return tasks if len(tasks) == 3 and all(t["state"] == "COMPLETED" for t in tasks) else None
    tasks = wait_for(tasks_done, timeout=120, message="the array's three tasks to complete")
    assert sorted(t["arrayTaskId"] for t in tasks) == [0, 1, 2]
    for task in tasks:
        text = daemon.get(f"/api/slurm/jobs/{task['jobId']}/output", user="alice").json()["data"]
        assert text == f"task={task['arrayTaskId']}\n"


def test_jobs_submitted_outside_the_portal_are_listed_read_and_cancelled(daemon_factory, shared_dir,
                                                                           slurm_conf, users):
    config = jobs_config(shared_dir, slurm_conf)
    config["jobs"] = {"cluster_jobs": True}
    daemon = daemon_factory(config)
    folder = os.path.join(shared_dir.root, "login node 결과")
    os.makedirs(folder)
    os.chown(folder, 2001, 2001)
    env = {**os.environ, "SLURM_CONF": slurm_conf}

    def sbatch(*args):
        answer = subprocess.run(["setpriv", "--reuid=2001", "--regid=2001", "--clear-groups", "--", "sbatch",
                                 "--parsable", "--chdir", folder, *args], capture_output=True, text=True,
                                env=env, cwd=folder, check=True)
        return answer.stdout.strip().split(";")[0]
    done = sbatch("-J", "login-node", "--wrap", "echo from the login node; echo oops >&2", "-e", "err-%j.txt")
    sleeper = sbatch("-J", "login-sleeper", "-t", "5", "--wrap", "sleep 300")

    def listed():
        jobs = daemon.get("/api/slurm/jobs", user="alice", params={"limit": 1000}).json()["jobs"]
        found = {j["jobId"]: j for j in jobs if j["jobId"] in (done, sleeper)}
        return found if len(found) == 2 and found[done]["state"] == "COMPLETED" else None
    found = wait_for(listed, timeout=60, message="the login-node jobs in the list")
    assert found[done]["source"] == "cluster" and found[done]["name"] == "login-node"
    assert found[done]["user"] == "alice" and found[done]["submissionId"] is None
    detail = daemon.get(f"/api/slurm/jobs/{done}", user="alice").json()
    assert detail["stdout_path"] == os.path.join(folder, f"slurm-{done}.out")
    assert detail["stderr_path"] == os.path.join(folder, f"err-{done}.txt")
    out = daemon.get(f"/api/slurm/jobs/{done}/output", user="alice").json()
    assert out["data"] == "from the login node\n" and out["eof"] is True
    err = daemon.get(f"/api/slurm/jobs/{done}/output", user="alice", params={"stream": "stderr"}).json()
    assert err["data"] == "oops\n"
    # Another user sees none of it; a FIFO or symlink in place of the output is never opened.
    assert daemon.get(f"/api/slurm/jobs/{done}", user="bob").status_code == 404
    assert daemon.get(f"/api/slurm/jobs/{done}/output", user="bob").status_code == 404
    os.rename(os.path.join(folder, f"err-{done}.txt"), os.path.join(folder, "moved.txt"))
    os.mkfifo(os.path.join(folder, f"err-{done}.txt"))
    os.chown(os.path.join(folder, f"err-{done}.txt"), 2001, 2001)
    refused = daemon.get(f"/api/slurm/jobs/{done}/output", user="alice", params={"stream": "stderr"}, timeout=10)
    assert refused.status_code == 409, refused.text
    running = daemon.get("/api/slurm/jobs", user="alice", params={"state": "RUNNING,PENDING", "limit": 1000})
    assert sleeper in [j["jobId"] for j in running.json()["jobs"]]
    assert daemon.delete(f"/api/slurm/jobs/{sleeper}", user="bob").status_code == 404
    assert daemon.delete(f"/api/slurm/jobs/{sleeper}", user="alice").status_code == 200
    wait_for(lambda: daemon.get(f"/api/slurm/jobs/{sleeper}", user="alice").json()["state"] == "CANCELLED",
             message="the login-node job cancelled")
