"""Uploaded files carry the Slurm job they were uploaded for or first used by (``slurm_job_id``)."""

import pytest

from support.slurm import jobs_config, slurm_conf  # noqa: F401
from support.uploads import upload

pytestmark = pytest.mark.slurm

SUBMIT = "/api/slurm/jobs/submit"


def submit(daemon, user, script, **fields):
    answer = daemon.post(SUBMIT, user=user, json={"jobName": "linked", "script": script, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobId"]


def _file(daemon, file_id):
    answer = daemon.get(f"/api/v2/files/{file_id}", user="alice")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_files_carry_the_slurm_job_that_used_them(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    for_job = upload(daemon, "alice", b"for the job\n", filename="tmp.txt", job_id="tmp-results-1")
    by_id = upload(daemon, "alice", b"by id\n", filename="by-id.txt")
    by_path = upload(daemon, "alice", b"by path\n", filename="by-path.txt")
    unused = upload(daemon, "alice", b"unused\n", filename="unused.txt")
    assert for_job["slurm_job_id"] is None and _file(daemon, by_id["file_id"])["slurm_job_id"] is None

    first = submit(daemon, "alice", "#!/bin/bash\ntrue\n", jobId="tmp-results-1", fileIds=[by_id["file_id"]],
                   files=[{"storage_path": by_path["storage_path"]}])

    for uploaded in (for_job, by_id, by_path):
        assert _file(daemon, uploaded["file_id"])["slurm_job_id"] == first
    assert _file(daemon, unused["file_id"])["slurm_job_id"] is None
    listed = daemon.get("/api/v2/files", user="alice").json()["files"]
    assert {f["file_id"]: f["slurm_job_id"] for f in listed} == {
        for_job["file_id"]: first, by_id["file_id"]: first, by_path["file_id"]: first,
        unused["file_id"]: None}

    # A later job reusing an input leaves the file with the job it was first used by.
    second = submit(daemon, "alice", "#!/bin/bash\ntrue\n", fileIds=[by_id["file_id"], unused["file_id"]])
    assert second != first
    assert _file(daemon, by_id["file_id"])["slurm_job_id"] == first
    assert _file(daemon, unused["file_id"])["slurm_job_id"] == second
