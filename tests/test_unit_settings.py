"""Settings that change answers, in process: each test has a portal of its own settings."""

import pytest

from support.daemon import make_token
from support.inprocess import inprocess

pytestmark = pytest.mark.unit


def me(portal, authorization):
    return portal.get("/api/v2/me", headers={"Authorization": authorization})


def test_invalid_token_status_can_be_401():
    with inprocess({"auth": {"invalid_token_status": 401}}) as portal:
        answer = me(portal, "Bearer not-a-jwt")
    assert answer.status_code == 401
    assert answer.json["msg"] == "Not enough segments"
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_uids_above_max_uid_are_refused_and_the_bound_itself_is_allowed():
    with inprocess({"users": {"max_uid": 2001}}) as portal:
        assert me(portal, f"Bearer {make_token('alice')}").status_code == 200  # uid 2001
        answer = me(portal, f"Bearer {make_token('bob')}")  # uid 2002
    assert answer.status_code == 403
    assert "above 2001" in answer.json["message"]


def test_a_raised_min_uid_refuses_the_accounts_below_it():
    with inprocess({"users": {"min_uid": 2002}}) as portal:
        answer = me(portal, f"Bearer {make_token('alice')}")
    assert answer.status_code == 403 and answer.json["error"] == "user_denied"
    assert "below 2002" in answer.json["message"]


def test_a_body_over_max_json_body_is_413():
    with inprocess({"server": {"max_json_body": 64}}) as portal:
        answer = portal.post("/api/v2/files/upload/init", user="alice",
                             json={"filename": "x" * 100, "size": 1})
    assert answer.status_code == 413
    assert answer.json["error"] == "too_large"


def test_a_script_over_max_script_size_is_refused_before_slurm():
    with inprocess({"slurm": {"max_script_size": 1024}}) as portal:
        answer = portal.post("/api/slurm/jobs/submit", user="alice", json={
            "jobName": "big", "partition": "group1", "nodes": 1, "cpus": 1, "memory": "1G",
            "time": "10", "script": "#!/bin/bash\n" + "echo x\n" * 400})
    assert answer.status_code == 400
    assert "script" in answer.json["errors"]


def test_an_upload_over_uploads_max_size_is_413():
    with inprocess({"uploads": {"max_size": "1MiB"}}) as portal:
        answer = portal.post("/api/v2/files/upload/init", user="alice",
                             json={"filename": "a.bin", "size": 2 * 1024 * 1024})
    assert answer.status_code == 413


def test_a_rate_limit_answers_429_with_retry_after():
    with inprocess({"security": {"rate_limits": {"upload_init": 2}}}) as portal:
        answers = [portal.post("/api/v2/files/upload/init", user="alice", json={"filename": f"{n}.txt", "size": 1})
                   for n in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert int(answers[2].headers["Retry-After"]) >= 1


def test_cors_is_off_unless_origins_are_configured():
    with inprocess() as portal:
        answer = portal.get("/api/v2/me", user="alice", headers={"Origin": "https://dashboard.example.org"})
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_only_one_in_process_portal_is_open_at_a_time():
    with inprocess() as portal:
        with pytest.raises(RuntimeError, match="already open"):
            with inprocess():
                pass
        assert portal.get("/api/v2/me", user="alice").status_code == 200
