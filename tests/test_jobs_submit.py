"""Job submission against the real local Slurm (scripts/dev-slurm) and a real daemon."""

import os
import shutil
import signal
import sqlite3
import subprocess
import threading

import pytest
import requests

from support.sifbuild import build_sif
from support.slurm import (dead_controller_conf, jobs_config, output, slurm_conf,  # noqa: F401
                           squeue_comments, wait_finished, wait_for)
from support.uploads import upload

DASHBOARD_EXAMPLE = {
    "jobName": "test_job",
    "partition": "group1",
    "nodes": 1,
    "cpus": 64,
    "memory": "16GB",
    "time": "01:00:00",
    "script": "#!/bin/bash\necho Hello World",
    "jobId": "tmp-1234567890",
    "files": [],
    "apptainerImage": {
        "id": "python_3.11", "name": "python_3.11.sif",
        "path": "/shared/apptainer/images/compute/python_3.11.sif",
        "type": "compute", "version": "3.11",
    },
}

SUBMIT = "/api/slurm/jobs/submit"

pytestmark = pytest.mark.slurm


def add_image(daemon, shared, relpath):
    path = os.path.join(shared.images, relpath)
    build_sif(path)
    image_id = os.path.basename(relpath)[:-4]
    wait_for(lambda: daemon.get(f"/api/v2/apptainer/images/{image_id}", user="alice").status_code == 200,
             message=f"image {image_id} in the catalog")
    return path


def alice_jobs(slurm_conf):
    answer = subprocess.run(["squeue", "-h", "-t", "all", "-u", "alice", "-o", "%i"], capture_output=True,
                            text=True, env={**os.environ, "SLURM_CONF": slurm_conf}, check=True)
    return set(answer.stdout.split())


@pytest.mark.slurm_backends("cli", "rest")
def test_dashboard_example_runs_in_its_image_as_the_user(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    image_path = add_image(daemon, shared_dir, "compute/python_3.11.sif")
    uploaded = upload(daemon, "alice", b"a,b\n1,2\n", filename="input.csv", job_id="tmp-1234567890")
    body = dict(DASHBOARD_EXAMPLE, files=[{"name": "input.csv", "storage_path": uploaded["storage_path"]}])
    # The dashboard sends the path it knows; the catalog's is what counts and must agree.
    body["apptainerImage"] = dict(body["apptainerImage"], path=image_path)

    answer = daemon.post(SUBMIT, user="alice", json=body)

    assert answer.status_code == 200, answer.text
    reply = answer.json()
    job_id = reply["jobId"]
    assert reply["success"] is True and job_id.isdigit()
    assert reply["message"] == f"Job {job_id} submitted successfully"
    finished = wait_finished(daemon, "alice", job_id)
    assert finished["state"] == "COMPLETED", finished
    assert finished["user"] == "alice" and finished["partition"] == "group1"
    assert finished["image"]["id"] == "python_3.11" and finished["image"]["path"] == image_path
    text = output(daemon, "alice", job_id)
    assert "Hello World" in text
    invocation = next(line for line in text.splitlines() if line.startswith("APPTAINER-TEST-STANDIN args:"))
    job_dir = finished["job_dir"]
    assert f"[exec] [--bind] [{job_dir}]" in invocation
    assert f"[--bind] [{os.path.dirname(uploaded['storage_path'])}]" in invocation
    assert f"[{image_path}] [/bin/bash] [{job_dir}/script.sh]" in invocation
    assert "[--nv]" not in invocation
    # The batch script carries the checked fields and the submission id; the user's script is its own file.
    assert "#SBATCH --partition=group1\n" in finished["script"]
    assert "#SBATCH --ntasks-per-node=64\n" in finished["script"]
    assert "#SBATCH --mem=16G\n" in finished["script"]
    assert f"#SBATCH --comment=hpcportal:{reply['submissionId']}\n" in finished["script"]
    assert "#SBATCH --export=NONE\n" in finished["script"]
    assert f"export INPUT_FILE_0={uploaded['storage_path']}\n" in finished["script"]
    assert finished["user_script"] == DASHBOARD_EXAMPLE["script"]
    assert finished["files"] == [uploaded["storage_path"]]
    stat = os.stat(os.path.join(job_dir, f"slurm-{job_id}.out"))
    assert (stat.st_uid, stat.st_gid) == (2001, 2001)
    assert squeue_comments(slurm_conf)[job_id] == f"hpcportal:{reply['submissionId']}"
    if daemon.config["database"]["url"].startswith("sqlite"):
        db = sqlite3.connect(os.path.join(shared_dir.state, "portal.db"))
        linked = db.execute("SELECT slurm_job_id FROM uploaded_file WHERE id = ?",
                            (uploaded["file_id"],)).fetchone()
        assert linked == (job_id,)


@pytest.mark.slurm_backends("cli", "rest")
@pytest.mark.databases("sqlite")
def test_job_without_image_gets_files_and_the_login_environment(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf), env={"PORTAL_TEST_LEAK": "daemon-env"})
    uploaded = upload(daemon, "alice", b"uploaded\n", filename="one.txt")
    shared_file = os.path.join(shared_dir.root, "data", "two words.txt")
    os.makedirs(os.path.dirname(shared_file), exist_ok=True)
    with open(shared_file, "w") as handle:
        handle.write("shared\n")
    os.chmod(shared_file, 0o644)
    # Bytes a naive heredoc or line-based filter would trip over: they must reach bash untouched.
    script = ("#!/bin/bash\nid -un\necho \"count=$INPUT_FILE_COUNT\"\necho \"0=$INPUT_FILE_0\"\n"
              "echo \"1=$INPUT_FILE_1\"\necho \"home=$HOME\"\necho \"leak=${PORTAL_TEST_LEAK:-none}\"\n"
              "cat <<'EOF'\n#SBATCH --uid=0\nEOF\necho 'tab\there' \"$((6 * 7))\"\nprintf 'no newline at end'")

    # A space in the name is fine: the path reaches the job quoted.
    answer = daemon.post(SUBMIT, user="alice", json={
        "jobName": "plain", "script": script, "memory": 512, "time": 5,
        "files": [{"storage_path": shared_file}], "fileIds": [uploaded["file_id"]]})

    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    finished = wait_finished(daemon, "alice", job_id)
    assert finished["state"] == "COMPLETED", finished
    assert finished["partition"] == "compute"  # the default partition, written out
    text = output(daemon, "alice", job_id)
    lines = text.splitlines()
    assert lines[0] == "alice"
    assert "count=2" in lines
    assert f"0={shared_file}" in lines and f"1={uploaded['storage_path']}" in lines
    assert "home=/home/alice" in lines
    assert "leak=none" in lines
    assert "#SBATCH --uid=0" in lines and "tab\there 42" in lines
    assert text.endswith("no newline at end")
    with open(os.path.join(finished["job_dir"], "script.sh"), "rb") as handle:
        assert handle.read() == script.encode()
    assert "#SBATCH --mem=512M\n" in finished["script"] and "#SBATCH --time=00:05:00\n" in finished["script"]
    assert "apptainer" not in finished["script"]


@pytest.mark.databases("sqlite")
def test_every_invalid_field_is_refused_before_anything_runs(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    add_image(daemon, shared_dir, "compute/python_3.11.sif")
    add_image(daemon, shared_dir, "compute/other_1.0.sif")
    add_image(daemon, shared_dir, "viz/paraview_5.11.sif")
    bob_upload = upload(daemon, "bob", b"secret\n", filename="bob.txt")
    bob_private = os.path.join(shared_dir.root, "bob-private.txt")
    with open(bob_private, "w") as handle:
        handle.write("private\n")
    os.chown(bob_private, 2002, 2002)
    os.chmod(bob_private, 0o600)
    before = alice_jobs(slurm_conf)
    good = {"jobName": "ok", "script": "#!/bin/bash\ntrue\n"}
    image = {"id": "python_3.11"}
    cases = [
        ({"jobName": None}, "jobName"),
        ({"jobName": "has\ttab"}, "jobName"),
        ({"jobName": "x" * 129}, "jobName"),
        ({"jobName": "x\n#SBATCH --uid=0"}, "jobName"),
        ({"script": ""}, "script"),
        ({"script": None}, "script"),
        ({"script": "x" * (1024 * 1024 + 1)}, "script"),
        ({"script": 42}, "script"),
        ({"partition": "nosuch"}, "partition"),
        ({"partition": "compute --uid=0"}, "partition"),
        ({"partition": "-pviz"}, "partition"),
        ({"nodes": 0}, "nodes"),
        ({"nodes": "two"}, "nodes"),
        ({"nodes": 1.5}, "nodes"),
        ({"cpus": -1}, "cpus"),
        ({"cpus": True}, "cpus"),
        ({"memory": "lots"}, "memory"),
        ({"memory": "16XB"}, "memory"),
        ({"memory": "1G\n#SBATCH --uid=0"}, "memory"),
        ({"memory": 0}, "memory"),
        ({"time": "1 hour"}, "time"),
        ({"time": "01:00:00\n#SBATCH --uid=0"}, "time"),
        ({"time": 0}, "time"),
        ({"time": "1-2-3"}, "time"),
        ({"account": "a b"}, "account"),
        ({"qos": "--uid=0"}, "qos"),
        ({"gpus": -1}, "gpus"),
        ({"jobId": "tmp 1\n"}, "jobId"),
        ({"apptainerImage": {"id": "nosuch"}}, "apptainerImage"),
        ({"apptainerImage": {"name": "python_3.11.sif"}}, "apptainerImage"),
        ({"apptainerImage": "python_3.11"}, "apptainerImage"),
        ({"apptainerImage": {"id": "python_3.11",
                             "path": os.path.join(shared_dir.images, "compute", "other_1.0.sif")}}, "apptainerImage"),
        ({"apptainerImage": {"id": "python_3.11", "path": "/tmp/evil.sif"}}, "apptainerImage"),
        ({"apptainerImage": {"id": "paraview_5.11"}, "partition": "compute"}, "apptainerImage"),
        ({"apptainerImage": image, "partition": "viz"}, "apptainerImage"),
        ({"files": [{"storage_path": bob_upload["storage_path"]}]}, "files[0]"),
        ({"fileIds": [bob_upload["file_id"]]}, "fileIds[0]"),
        ({"files": [{"storage_path": bob_private}]}, "files[0]"),
        ({"files": [{"storage_path": "/etc/shadow"}]}, "files[0]"),
        ({"files": [{"storage_path": os.path.join(shared_dir.root, "..", "..", "..", "etc", "passwd")}]}, "files[0]"),
        ({"files": [{"storage_path": "relative/path"}]}, "files[0]"),
        ({"files": [{"storage_path": shared_dir.root + "/x\n#SBATCH --uid=0"}]}, "files[0]"),
        ({"files": "nope"}, "files"),
        ({"templateId": "official.nosuch"}, "templateId"),
    ]
    for change, field in cases:
        body = {k: v for k, v in {**good, **change}.items() if v is not None or k not in change}
        answer = daemon.post(SUBMIT, user="alice", json=body)
        assert answer.status_code == 400, (change, answer.text)
        reply = answer.json()
        assert reply["success"] is False and field in reply["errors"], (change, reply)
        assert reply["message"]
    # Several bad fields are reported together.
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "a\nb", "nodes": 0, "memory": "x", "time": "y"})
    assert set(answer.json()["errors"]) >= {"jobName", "nodes", "memory", "time", "script"}
    # Not JSON, not an object.
    assert daemon.post(SUBMIT, user="alice", data="[1]", headers={"Content-Type": "application/json"}).status_code == 400
    # Root and system accounts never get this far.
    assert daemon.post(SUBMIT, user="root", json=good).status_code == 403
    assert daemon.post(SUBMIT, user="daemon", json=good).status_code == 403
    assert daemon.post(SUBMIT, json=good).status_code == 401
    # Nothing ran, nothing was recorded, no job folder was left behind.
    assert alice_jobs(slurm_conf) == before
    assert daemon.get("/api/slurm/jobs", user="alice").json() == {"jobs": [], "total": 0}
    jobs_folder = os.path.join(shared_dir.uploads, "alice", "jobs")
    assert not os.path.isdir(jobs_folder) or os.listdir(jobs_folder) == []


@pytest.mark.slurm_backends("cli", "rest")
@pytest.mark.databases("sqlite")
def test_slurm_refusal_answers_slurms_reason_and_records_nothing(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "huge", "cpus": 1000,
                                                      "script": "#!/bin/bash\ntrue\n"})
    assert answer.status_code == 422, answer.text
    reply = answer.json()
    assert reply["success"] is False
    assert "More processors requested than permitted" in reply["message"]
    assert daemon.get("/api/slurm/jobs", user="alice").json()["total"] == 0
    assert os.listdir(os.path.join(shared_dir.uploads, "alice", "jobs")) == []
    metrics = daemon.get("/metrics").text
    assert 'hpcportal_job_submissions_total{outcome="refused"} 1.0' in metrics


def wrapper_bin(shared, sbatch_body):
    """A bin folder with the real Slurm commands and an sbatch wrapper (run as the user)."""
    folder = os.path.join(shared.root, "slurm-bin")
    os.makedirs(folder, mode=0o755)
    for command in ("squeue", "scancel", "sinfo", "sacct", "scontrol", "sacctmgr"):
        os.symlink(shutil.which(command), os.path.join(folder, command))
    path = os.path.join(folder, "sbatch")
    with open(path, "w") as handle:
        handle.write("#!/bin/bash\n" + sbatch_body)
    os.chmod(path, 0o755)
    return folder


@pytest.mark.databases("sqlite")
def test_stopped_controller_answers_503_and_records_nothing(daemon_factory, shared_dir, slurm_conf):
    dead = dead_controller_conf(shared_dir, slurm_conf)
    # Partitions come from the running controller; sbatch talks to one that is not there.
    folder = wrapper_bin(shared_dir, f"SLURM_CONF={dead} exec {shutil.which('sbatch')} \"$@\"\n")
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, bin_dir=folder))

    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "down", "script": "#!/bin/bash\ntrue\n"})

    assert answer.status_code == 503, answer.text
    reply = answer.json()
    assert reply["success"] is False
    assert reply["message"].startswith("Slurm controller is not reachable")
    assert daemon.get("/api/slurm/jobs", user="alice").json()["total"] == 0
    assert os.listdir(os.path.join(shared_dir.uploads, "alice", "jobs")) == []
    # With the whole cluster out of reach the list still answers what the portal knows.
    down = daemon_factory(jobs_config(shared_dir, dead), shared=shared_dir)
    listed = down.get("/api/slurm/jobs", user="alice", timeout=60)
    assert listed.status_code == 200, listed.text
    assert listed.json()["jobs"] == [] and listed.json()["slurm"]["reachable"] is False
    assert listed.json()["slurm"]["message"].startswith("Slurm controller is not reachable")


@pytest.mark.databases("sqlite")
def test_lost_sbatch_answer_is_recovered_through_the_comment(daemon_factory, shared_dir, slurm_conf):
    # sbatch submits, then never answers: the daemon gives up after command_timeout.
    folder = wrapper_bin(shared_dir, f"{shutil.which('sbatch')} \"$@\" >/dev/null\nexec sleep 60\n")
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, bin_dir=folder, command_timeout="3s"))

    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "lost", "script": "#!/bin/bash\necho found\n"})

    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert squeue_comments(slurm_conf)[reply["jobId"]] == f"hpcportal:{reply['submissionId']}"
    finished = wait_finished(daemon, "alice", reply["jobId"])
    assert output(daemon, "alice", reply["jobId"]) == "found\n" and finished["name"] == "lost"


@pytest.mark.databases("sqlite")
def test_submission_lost_in_a_crash_is_recorded_after_restart(daemon_factory, shared_dir, slurm_conf):
    flag = os.path.join(shared_dir.root, "submitted.flag")
    open(flag, "w").close()
    os.chmod(flag, 0o666)
    folder = wrapper_bin(shared_dir, f"{shutil.which('sbatch')} \"$@\" >/dev/null\necho yes > {flag}\n"
                                     "exec sleep 60\n")
    config = jobs_config(shared_dir, slurm_conf, bin_dir=folder, command_timeout="2s")
    daemon = daemon_factory(config)
    uploaded = upload(daemon, "alice", b"input\n", filename="in.txt", job_id="tmp-crash")

    def submit_and_lose_the_answer():
        try:
            daemon.post(SUBMIT, user="alice", json={"jobName": "crash", "jobId": "tmp-crash",
                                                    "script": "#!/bin/bash\necho after-crash\n"})
        except requests.ConnectionError:
            pass  # the daemon is killed while this request waits for sbatch

    threading.Thread(target=submit_and_lose_the_answer, daemon=True).start()
    wait_for(lambda: open(flag).read().strip() == "yes", message="sbatch to have submitted")
    daemon.proc.send_signal(signal.SIGKILL)  # the daemon dies between sbatch and the database
    daemon.proc.wait()

    restarted = daemon_factory(dict(config, slurm=dict(config["slurm"], bin_dir="/usr/bin")),
                               shared=shared_dir)
    listed = wait_for(lambda: restarted.get("/api/slurm/jobs", user="alice").json()["jobs"],
                      message="the job to be recovered")
    assert [j["name"] for j in listed] == ["crash"]
    job_id = listed[0]["jobId"]
    assert squeue_comments(slurm_conf)[job_id] == f"hpcportal:{listed[0]['submissionId']}"
    wait_finished(restarted, "alice", job_id)
    assert output(restarted, "alice", job_id) == "after-crash\n"
    # Recorded from the folder's submission record: the dashboard's uploads are linked too.
    db = sqlite3.connect(os.path.join(shared_dir.state, "portal.db"))
    assert db.execute("SELECT slurm_job_id FROM uploaded_file WHERE id = ?",
                      (uploaded["file_id"],)).fetchone() == (job_id,)


TEMPLATE = """\
name: Echo files
version: "1.2.0"
category: general
description: Prints its parameter and file.
slurm:
  partition: {default: compute, choices: [compute, group1]}
  cpus: {default: 1, max: 4}
  time: {default: "00:10:00"}
apptainer:
  image: "python*"
files:
  - name: data
    label: Data
    patterns: ["*.csv"]
parameters:
  - name: greeting
    label: Greeting
    type: string
    default: hello
script: |
  echo "greeting=$PARAM_GREETING"
  echo "data=$FILE_DATA"
  echo "inputs=$INPUT_FILE_COUNT"
  id -un
"""


@pytest.mark.slurm_backends("cli", "rest")
@pytest.mark.databases("sqlite")
def test_template_based_submit(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    image_path = add_image(daemon, shared_dir, "compute/python_3.11.sif")
    with open(os.path.join(shared_dir.templates, "official", "echo-files.yaml"), "w") as handle:
        handle.write(TEMPLATE)
    wait_for(lambda: daemon.get("/api/v2/templates/official.echo-files", user="alice").status_code == 200,
             message="the template in the catalog")
    uploaded = upload(daemon, "alice", b"x,y\n", filename="points.csv")

    too_many = daemon.post(SUBMIT, user="alice", json={
        "templateId": "official.echo-files", "cpus": 8, "fileIds": [uploaded["file_id"]]})
    assert too_many.status_code == 400 and "cpus" in too_many.json()["errors"], too_many.text
    answer = daemon.post(SUBMIT, user="alice", json={
        "templateId": "official.echo-files", "templateVersion": "1.2.0", "partition": "group1",
        "parameters": {"greeting": "hi there"}, "files": [{"name": "data", "file_id": uploaded["file_id"]}]})

    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    finished = wait_finished(daemon, "alice", job_id)
    assert finished["state"] == "COMPLETED", finished
    assert finished["template"] == {"id": "official.echo-files", "version": "1.2.0"}
    assert finished["partition"] == "group1" and finished["name"] == "echo-files"
    text = output(daemon, "alice", job_id)
    assert "greeting=hi there" in text and f"data={uploaded['storage_path']}" in text
    assert "inputs=1" in text and "alice" in text.splitlines()
    assert f"[{image_path}]" in text
    assert "#SBATCH --comment=hpcportal:" in finished["script"]
    assert finished["script"].startswith("#!/bin/bash -l\n")


@pytest.mark.databases("sqlite")
def test_submissions_are_rate_limited_per_user(daemon_factory, shared_dir, slurm_conf):
    config = jobs_config(shared_dir, slurm_conf)
    config["security"] = {"rate_limits": {"submit": 2}}
    daemon = daemon_factory(config)
    bad = {"jobName": "a\nb", "script": "true"}  # refused by validation: nothing reaches Slurm
    assert [daemon.post(SUBMIT, user="alice", json=bad).status_code for _ in range(2)] == [400, 400]
    limited = daemon.post(SUBMIT, user="alice", json=bad)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert daemon.post(SUBMIT, user="bob", json=bad).status_code == 400


def test_a_job_stands_when_its_records_cannot_be_written(slurm_conf, monkeypatch, caplog):
    """The batch script and record are written while Slurm works on the job: when that
    fails (a full disk), Slurm has the job by then, so it is answered and recorded, and the
    log says what is missing."""
    from hpcportal.jobs.folder import NewJobFolder
    from support.inprocess import inprocess

    def disk_full(self, files):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(NewJobFolder, "add", disk_full)
    with inprocess({"slurm": {"bin_dir": "/usr/bin", "conf": slurm_conf, "backend": "cli"}}) as portal:
        answer = portal.post(SUBMIT, user="alice", json={"jobName": "records", "script": "#!/bin/bash\ntrue\n"})
        assert answer.status_code == 200, answer.text
        job_id = answer.json["jobId"]
        assert portal.get(f"/api/slurm/jobs/{job_id}", user="alice").json["name"] == "records"
        written = os.listdir(os.path.join(portal.shared.uploads, "alice", "jobs", answer.json["submissionId"]))
        assert "script.sh" in written and not {"job.sbatch", "submission.json"} & set(written)
    assert "its batch script and record not written" in caplog.text
