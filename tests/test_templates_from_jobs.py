"""Saving a submitted job as a template (POST /api/slurm/jobs/{id}/template), with real Slurm jobs."""

import os
import pwd

import pytest

from support.slurm import jobs_config, output, slurm_conf, wait_finished, wait_for  # noqa: F401
from support.uploads import upload
from test_jobs_submit import TEMPLATE, add_image

SUBMIT = "/api/slurm/jobs/submit"
LIST = "/api/v2/templates"

pytestmark = [pytest.mark.slurm, pytest.mark.databases("sqlite")]

SCRIPT = ("#!/bin/bash\n#SBATCH --job-name=ignored-in-templates\n"
          "echo \"count=$INPUT_FILE_COUNT\"\ncat \"$INPUT_FILE_0\"\necho \"mesh=$INPUT_FILE_1\"\nid -un\n")


def test_a_plain_job_becomes_a_template_that_runs_again(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    add_image(daemon, shared_dir, "compute/python_3.11.sif")
    table = upload(daemon, "alice", b"a,b\n1,2\n", filename="결과 파일.csv")
    mesh = upload(daemon, "alice", b"mesh\n", filename="wing.msh")
    answer = daemon.post(SUBMIT, user="alice", json={
        "jobName": "결과 분석 run", "partition": "group1", "cpus": 2, "memory": "1G", "time": "00:05:00",
        "script": SCRIPT, "fileIds": [table["file_id"], mesh["file_id"]],
        "apptainerImage": {"id": "python_3.11"}})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]

    saved = daemon.post(f"/api/slurm/jobs/{job_id}/template", user="alice")
    assert saved.status_code == 201, saved.text
    item = saved.json()
    assert item["id"] == "users.alice.run" and item["source"] == "users/alice" and item["name"] == "결과 분석 run"
    assert item == daemon.get(f"{LIST}/users.alice.run", user="alice").json()
    assert {k: item["defaults"][k] for k in ("partition", "cpus", "memory", "time")} == {
        "partition": "group1", "cpus": 2, "memory": "1G", "time": "00:05:00"}
    assert item["apptainer"]["image"] == "python_3.11" and item["ready"] is True
    slots = [(f["name"], f["label"], f["patterns"]) for f in item["files"]]
    assert slots == [("file_1", "결과 파일.csv", ["*.csv"]), ("wing", "wing.msh", ["*.msh"])]
    assert "#SBATCH" not in item["script"] and 'cat "$INPUT_FILE_0"' in item["script"]
    assert os.stat(item["path"]).st_uid == pwd.getpwnam("alice").pw_uid

    # The template runs: the same files in its named slots.
    again = daemon.post(SUBMIT, user="alice", json={
        "templateId": "users.alice.run",
        "files": [{"name": "file_1", "file_id": table["file_id"]}, {"name": "wing", "file_id": mesh["file_id"]}]})
    assert again.status_code == 200, again.text
    finished = wait_finished(daemon, "alice", again.json()["jobId"])
    assert finished["state"] == "COMPLETED", finished
    assert finished["partition"] == "group1"
    text = output(daemon, "alice", finished["jobId"])
    assert "count=2" in text and "a,b\n1,2" in text and f"mesh={mesh['storage_path']}" in text
    assert "alice" in text.splitlines()

    # Named by the caller; only one's own jobs.
    named = daemon.post(f"/api/slurm/jobs/{job_id}/template", user="alice", json={"name": "두 번째 저장"})
    assert named.status_code == 201 and named.json()["name"] == "두 번째 저장"
    assert named.json()["id"] == "users.alice.template"
    assert daemon.post(f"/api/slurm/jobs/{job_id}/template", user="alice", json={"name": ""}).status_code == 400
    other = daemon.post(f"/api/slurm/jobs/{job_id}/template", user="bob")
    assert other.status_code == 404 and other.json()["error"] == "job_not_found"
    assert daemon.post(f"/api/slurm/jobs/{job_id}/template", user="bob", admin=True).status_code == 404
    assert daemon.post("/api/slurm/jobs/999999999/template", user="alice").status_code == 404


def test_a_template_job_keeps_its_parameters_and_slots(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    add_image(daemon, shared_dir, "compute/python_3.11.sif")
    with open(os.path.join(shared_dir.templates, "official", "echo-files.yaml"), "w") as handle:
        handle.write(TEMPLATE)
    wait_for(lambda: daemon.get(f"{LIST}/official.echo-files", user="alice").status_code == 200)
    data = upload(daemon, "alice", b"x,y\n", filename="points.csv")
    answer = daemon.post(SUBMIT, user="alice", json={
        "templateId": "official.echo-files", "parameters": {"greeting": "안녕 하세요"},
        "files": [{"name": "data", "file_id": data["file_id"]}]})
    assert answer.status_code == 200, answer.text

    saved = daemon.post(f"/api/slurm/jobs/{answer.json()['jobId']}/template", user="alice")
    assert saved.status_code == 201, saved.text
    item = saved.json()
    assert item["id"] == "users.alice.echo-files" and item["source"] == "users/alice"
    greeting = next(p for p in item["parameters"] if p["name"] == "greeting")
    assert greeting["default"] == "안녕 하세요"
    assert [(f["name"], f["patterns"]) for f in item["files"]] == [("data", ["*.csv"])]
    assert 'echo "greeting=$PARAM_GREETING"' in item["script"]
    assert item["apptainer"]["image"] == "python_3.11"
    assert "official.echo-files 1.2.0" in item["description"]
