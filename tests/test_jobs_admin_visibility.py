"""What an administrator sees of other users' jobs: everything by default,
only their own jobs when ``security.admins_see_all_jobs`` is false."""

import pytest

from support.slurm import jobs_config, slurm_conf, wait_finished  # noqa: F401

pytestmark = [pytest.mark.databases("sqlite"), pytest.mark.slurm]


def _alices_job(daemon):
    answer = daemon.post("/api/slurm/jobs/submit", user="alice",
                         json={"jobName": "private", "script": "#!/bin/bash\necho secret\n"})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    wait_finished(daemon, "alice", job_id)
    return job_id


def _as_admin(daemon, path, **params):
    return daemon.get(path, user="bob", admin=True, params=params)


@pytest.mark.parametrize("sees_all", [True, False])
def test_admins_see_other_users_jobs_only_when_the_site_allows(daemon_factory, shared_dir,
                                                               slurm_conf, sees_all):
    config = jobs_config(shared_dir, slurm_conf)
    if not sees_all:
        config["security"] = {"admins_see_all_jobs": False}
    daemon = daemon_factory(config)
    job_id = _alices_job(daemon)
    paths = [f"/api/slurm/jobs/{job_id}", f"/api/slurm/jobs/{job_id}/output",
             f"/api/slurm/jobs/{job_id}/files"]
    listed = _as_admin(daemon, "/api/slurm/jobs", all="true")
    if sees_all:
        assert job_id in [j["jobId"] for j in listed.json()["jobs"]]
        for path in paths:
            assert _as_admin(daemon, path).status_code == 200, path
        assert "secret" in _as_admin(daemon, paths[1]).json()["data"]
    else:
        assert listed.status_code == 403 and listed.json()["error"] == "admin_only"
        for path in paths:
            assert _as_admin(daemon, path).status_code == 404, path
        # Their own list stays theirs, and alice still sees her job.
        assert _as_admin(daemon, "/api/slurm/jobs").json()["total"] == 0
        assert daemon.get(paths[0], user="alice").status_code == 200
