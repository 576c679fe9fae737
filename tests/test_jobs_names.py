"""Korean names with spaces, the user's own #SBATCH lines and wrong JSON types, against a real
daemon and the real local Slurm (sbatch, squeue, scontrol as the user)."""

import hashlib
import os
import shutil
import subprocess

import pytest

from support.slurm import (dead_controller_conf, jobs_config, output, slurm_conf, wait_finished,  # noqa: F401
                           wait_for)
from support.uploads import upload

SUBMIT = "/api/slurm/jobs/submit"
KOREAN_NAME = "데이터 분석 (1)"

pytestmark = pytest.mark.slurm


def slurm(slurm_conf, *argv):
    answer = subprocess.run(list(argv), capture_output=True, text=True, check=True,
                            env={**os.environ, "SLURM_CONF": slurm_conf})
    return answer.stdout


def squeue_name(slurm_conf, job_id):
    return slurm(slurm_conf, "squeue", "-h", "-t", "all", "-j", job_id, "-o", "%j").rstrip("\n")


def scontrol(slurm_conf, job_id):
    """``scontrol -o show job`` as key/values (JobName may hold spaces: taken up to the next key)."""
    text = slurm(slurm_conf, "scontrol", "-o", "show", "job", job_id).strip()
    fields = {}
    for key in ("Partition", "TimeLimit", "NumNodes", "Comment", "StdOut", "WorkDir", "UserId",
                "MinMemoryNode", "MinMemoryCPU", "Requeue"):
        marker = f" {key}="
        if marker in text:
            fields[key] = text.split(marker, 1)[1].split(" ", 1)[0]
    fields["JobName"] = text.split(" JobName=", 1)[1].split(" UserId=", 1)[0]
    return fields


def sha256(data):
    return hashlib.sha256(data).hexdigest()


HASH_INPUTS = ('#!/bin/bash\nfor i in $(seq 0 $((INPUT_FILE_COUNT - 1))); do\n'
               '  var="INPUT_FILE_$i"; printf "%s|" "${!var}"; sha256sum < "${!var}" | cut -d" " -f1\n'
               'done\n')


def hashed_inputs(text):
    return [tuple(line.split("|", 1)) for line in text.splitlines() if "|" in line]


@pytest.mark.slurm_backends("cli", "rest")
def test_korean_names_with_spaces_reach_the_job_intact(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    first_bytes, second_bytes = "가,나\n1,2\n".encode(), b"second upload, same name\n"
    first = upload(daemon, "alice", first_bytes, filename="데이터 (1).csv")
    # The same name again: the daemon gives it its own clash name, "데이터 (1) (1).csv" or the like.
    second = upload(daemon, "alice", second_bytes, filename="데이터 (1).csv")
    third_bytes = b"commas and colons\n"
    third = upload(daemon, "alice", third_bytes, filename="결과, 최종: v2.txt")
    assert os.path.basename(first["storage_path"]) == "데이터 (1).csv"
    assert second["storage_path"] != first["storage_path"] and "데이터 (1)" in second["storage_path"]

    answer = daemon.post(SUBMIT, user="alice", json={
        "jobName": KOREAN_NAME, "script": HASH_INPUTS,
        "files": [{"storage_path": first["storage_path"]}, second["storage_path"]],
        "fileIds": [third["file_id"]]})

    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    assert squeue_name(slurm_conf, job_id) == KOREAN_NAME
    assert scontrol(slurm_conf, job_id)["JobName"] == KOREAN_NAME
    finished = wait_finished(daemon, "alice", job_id)
    assert finished["state"] == "COMPLETED", finished
    assert finished["name"] == KOREAN_NAME
    listed = daemon.get("/api/slurm/jobs", user="alice").json()["jobs"]
    assert [j["name"] for j in listed] == [KOREAN_NAME]
    assert hashed_inputs(output(daemon, "alice", job_id)) == [
        (first["storage_path"], sha256(first_bytes)), (second["storage_path"], sha256(second_bytes)),
        (third["storage_path"], sha256(third_bytes))]
    assert f'#SBATCH --job-name="{KOREAN_NAME}"\n' in finished["script"]
    assert finished["files"] == [first["storage_path"], second["storage_path"], third["storage_path"]]


@pytest.mark.slurm_backends("cli", "rest")
@pytest.mark.databases("sqlite")
def test_names_sbatch_reads_back_exactly(daemon_factory, shared_dir, slurm_conf):
    """Every kind of printable name is written so that sbatch reads back exactly what was asked."""
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    names = ['a "quoted" name', "it's", "back\\slash\\", "#not a comment", "hetjob x packjob", "$HOME `id`",
             "%j %u", " leading and trailing ", "é 漢 (2), 최종", "x" * 128, "--uid=0", "-J other"]
    for name in names:
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": name, "script": "#!/bin/bash\ntrue\n"})
        assert answer.status_code == 200, (name, answer.text)
        job_id = answer.json()["jobId"]
        assert squeue_name(slurm_conf, job_id) == name
        assert daemon.get(f"/api/slurm/jobs/{job_id}", user="alice").json()["name"] == name
    for name in ("a\nb", "a\rb", "a\tb", "a\x00b", "a\x1b[31mb", "a\u2028b", "x" * 129, "", "   "):
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": name, "script": "#!/bin/bash\ntrue\n"})
        assert answer.status_code == 400 and "jobName" in answer.json()["errors"], (name, answer.text)


TEMPLATE = """\
name: Checksum
version: "1.0.0"
category: general
description: Prints the checksum of its file.
slurm:
  time: {default: "00:05:00"}
files:
  - name: data
    label: Data
    patterns: ["*.csv"]
script: |
  printf '%s|' "$FILE_DATA"; sha256sum < "$FILE_DATA" | cut -d" " -f1
  printf 'input0=%s\\n' "$INPUT_FILE_0"
"""


@pytest.mark.slurm_backends("cli", "rest")
@pytest.mark.databases("sqlite")
def test_template_submit_takes_korean_files_and_names(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    with open(os.path.join(shared_dir.templates, "official", "checksum.yaml"), "w") as handle:
        handle.write(TEMPLATE)
    wait_for(lambda: daemon.get("/api/v2/templates/official.checksum", user="alice").status_code == 200,
             message="the template in the catalog")
    data = "이름,값\n".encode()
    upload(daemon, "alice", b"first\n", filename="측정 값 (1).csv")
    uploaded = upload(daemon, "alice", data, filename="측정 값 (1).csv")  # a clash name

    answer = daemon.post(SUBMIT, user="alice", json={
        "templateId": "official.checksum", "jobName": KOREAN_NAME,
        "files": [{"name": "data", "storage_path": uploaded["storage_path"]}]})

    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    assert squeue_name(slurm_conf, job_id) == KOREAN_NAME
    finished = wait_finished(daemon, "alice", job_id)
    assert finished["state"] == "COMPLETED" and finished["name"] == KOREAN_NAME, finished
    text = output(daemon, "alice", job_id)
    assert hashed_inputs(text)[0] == (uploaded["storage_path"], sha256(data))
    assert f"input0={uploaded['storage_path']}" in text.splitlines()
    # The template preview takes the same path.
    preview = daemon.post("/api/v2/templates/official.checksum/render", user="alice",
                          json={"files": [{"name": "data", "storage_path": uploaded["storage_path"]}]})
    assert preview.status_code == 200, preview.text


@pytest.mark.databases("sqlite")
def test_paths_no_quoting_makes_safe_or_not_the_users_are_refused(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    mine = upload(daemon, "alice", b"mine\n", filename="내 파일.csv")
    bobs = upload(daemon, "bob", b"bob's\n", filename="밥의 파일.csv")
    newline_path = os.path.join(os.path.dirname(mine["storage_path"]), "a\nb.csv")
    outside = os.path.join("/var/tmp", "남의 파일.csv")
    with open(outside, "w") as handle:
        handle.write("outside\n")
    try:
        for item in ({"storage_path": newline_path}, {"storage_path": mine["storage_path"] + "\x00"},
                     {"storage_path": mine["storage_path"].replace(" ", "\t")},
                     {"storage_path": bobs["storage_path"]}, {"storage_path": outside},
                     {"file_id": mine["file_id"], "storage_path": bobs["storage_path"]}):
            answer = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": "true\n", "files": [item]})
            assert answer.status_code == 400 and "files[0]" in answer.json()["errors"], (item, answer.text)
    finally:
        os.unlink(outside)
    assert daemon.get("/api/slurm/jobs", user="alice").json()["total"] == 0


@pytest.mark.slurm_backends("cli", "rest")
@pytest.mark.databases("sqlite")
def test_the_scripts_own_sbatch_lines_apply_where_the_body_is_silent(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    script = ('#!/bin/bash\n'
              f'#SBATCH --job-name="{KOREAN_NAME}" -p viz\n'
              '#SBATCH --time=7 --mem=600MB   # a comment sbatch ignores\n'
              '#SBATCH --no-requeue\n'
              '\n'
              'echo "partition=$SLURM_JOB_PARTITION"\n'
              '#SBATCH --uid=0\n')  # after the first command: sbatch never reads it, nor do we

    answer = daemon.post(SUBMIT, user="alice", json={"script": script})

    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    shown = scontrol(slurm_conf, job_id)
    assert shown["JobName"] == KOREAN_NAME and shown["Partition"] == "viz", shown
    assert shown["TimeLimit"] == "00:07:00" and shown["MinMemoryNode"] == "600M", shown
    assert shown["Requeue"] == "0", shown
    finished = wait_finished(daemon, "alice", job_id)
    assert finished["state"] == "COMPLETED", finished
    assert (finished["name"], finished["partition"]) == (KOREAN_NAME, "viz")
    assert (finished["resources"]["time"], finished["resources"]["memory"]) == ("00:07:00", "600M")
    assert "partition=viz" in output(daemon, "alice", job_id)
    with open(os.path.join(finished["job_dir"], "script.sh"), "rb") as handle:
        assert handle.read() == script.encode()  # the user's file is kept as written

    # The body's fields win where both speak, as sbatch's command line does over a script.
    answer = daemon.post(SUBMIT, user="alice", json={"script": script, "jobName": "from body",
                                                      "partition": "compute", "time": "00:03:00"})
    assert answer.status_code == 200, answer.text
    shown = scontrol(slurm_conf, answer.json()["jobId"])
    assert (shown["JobName"], shown["Partition"], shown["TimeLimit"]) == ("from body", "compute", "00:03:00")
    assert shown["MinMemoryNode"] == "600M"  # where the body is silent the script still speaks
    row = wait_finished(daemon, "alice", answer.json()["jobId"])
    assert (row["name"], row["partition"], row["resources"]["time"]) == ("from body", "compute", "00:03:00")

    # A partition named by the script is checked like the body's.
    answer = daemon.post(SUBMIT, user="alice", json={"script": "#!/bin/bash\n#SBATCH -J n -p nosuch\ntrue\n"})
    assert answer.status_code == 400 and "nosuch" in answer.json()["errors"]["partition"], answer.text


@pytest.mark.databases("sqlite")
def test_sbatch_options_off_the_allow_list_are_refused_with_their_line(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    cases = [
        ("#!/bin/bash\n#SBATCH -N 1\n#SBATCH --uid=0\ntrue\n", "--uid", 3),
        ("#!/bin/bash\n#SBATCH --gid=0\n", "--gid", 2),
        ("#!/bin/bash\n#SBATCH --get-user-env\n", "--get-user-env", 2),
        ("#!/bin/bash\n# set up\n#SBATCH --chdir=/root\n", "--chdir", 3),
        ("#!/bin/bash\n#SBATCH -o /etc/motd\n", "-o (--output)", 2),
        ("#!/bin/bash\n#SBATCH --error=/tmp/e\n", "--error", 2),
        ("#!/bin/bash\n#SBATCH --export=ALL\n", "--export", 2),
        ("#!/bin/bash\n#SBATCH --comment=hpcportal:other\n", "--comment", 2),
        ("#!/bin/bash\n#SBATCH --job-name=ok --wait\n", "--wait", 2),
    ]
    for script, option, line in cases:
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": script})
        assert answer.status_code == 400, (script, answer.text)
        reason = answer.json()["errors"]["script"]
        assert f"line {line}:" in reason and f"option {option} is not allowed" in reason, reason
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": "#SBATCH --mem=lots\ntrue\n"})
    assert answer.status_code == 400 and "line 1: --mem=lots" in answer.json()["errors"]["script"], answer.text
    assert daemon.get("/api/slurm/jobs", user="alice").json()["total"] == 0


WRONG_TYPES = [
    ("templateId", {"id": "official.x"}), ("templateId", ["official.x"]), ("templateId", 5),
    ("templateVersion", {"v": 1}), ("parameters", ["a"]), ("parameters", "a=1"),
    ("files", "/shared/x.csv"), ("files", {"storage_path": "/x"}), ("fileIds", "abc"),
    ("apptainerImage", ["python_3.11"]), ("apptainerImage", 5), ("nodes", "abc"), ("nodes", [1]),
    ("cpus", {"n": 1}), ("gpus", True), ("memory", ["1G"]), ("time", {"h": 1}), ("jobName", 5),
    ("jobName", ["x"]), ("script", ["true"]), ("partition", 5), ("account", ["a"]), ("qos", {}),
    ("jobId", 5),
]


@pytest.mark.databases("sqlite")
def test_fields_of_the_wrong_json_type_are_400_naming_the_field(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    good = {"jobName": "x", "script": "#!/bin/bash\ntrue\n"}
    for field, value in WRONG_TYPES + [("files", [5]), ("files", [{"storage_path": {"a": 1}}]),
                                       ("files", [{"file_id": ["x"]}]), ("files", [{"name": 5, "file_id": "x"}]),
                                       ("fileIds", [5])]:
        answer = daemon.post(SUBMIT, user="alice", json={**good, field: value})
        assert answer.status_code == 400, (field, value, answer.text)
        errors = answer.json()["errors"]
        assert any(key == field or key.startswith(field + "[") for key in errors), (field, value, errors)
    for field, value in (("templateId", {"id": "x"}), ("parameters", ["a"]), ("templateVersion", 1)):
        answer = daemon.post(SUBMIT, user="alice", json={"templateId": "official.x", field: value})
        assert answer.status_code == 400 and field in answer.json()["errors"], (field, answer.text)


@pytest.mark.databases("sqlite")
def test_a_bad_body_is_400_even_when_slurm_is_down(daemon_factory, shared_dir, slurm_conf):
    dead = dead_controller_conf(shared_dir, slurm_conf)
    # No Slurm command at all answers either: an empty bin folder.
    empty_bin = os.path.join(shared_dir.root, "no-slurm-bin")
    os.makedirs(empty_bin)
    for config in (jobs_config(shared_dir, dead), jobs_config(shared_dir, slurm_conf, bin_dir=empty_bin)):
        daemon = daemon_factory(config, shared=shared_dir)
        for field, value in WRONG_TYPES[:6] + [("jobName", "a\nb"),
                                               ("script", "#!/bin/bash\n#SBATCH --uid=0\n")]:
            body = {"jobName": "x", "script": "#!/bin/bash\ntrue\n", field: value}
            answer = daemon.post(SUBMIT, user="alice", json=body, timeout=60)
            assert answer.status_code == 400, (field, value, answer.text)
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": "#!/bin/bash\ntrue\n"},
                             timeout=60)
        assert answer.status_code == 503, answer.text
        daemon.stop()
    assert shutil.which("sbatch")
