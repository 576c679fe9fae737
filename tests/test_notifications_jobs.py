"""Job notifications end to end: the local Slurm, a real SMTP server and a webhook receiver on loopback.

A failing job, a job over its time limit and a cancelled one each give the
right job.finished event in the inbox, one e-mail and one signed webhook call.
The local Slurm does not enforce memory (task/none, no accounting gather), so
OUT_OF_MEMORY cannot be produced here: its message is tested in
test_unit_notifications.py from Slurm's state values.
"""

import hashlib
import hmac
import json

import pytest

from support.receivers import MailServer, WebhookReceiver
from support.slurm import jobs_config, slurm_conf, wait_for  # noqa: F401

pytestmark = [pytest.mark.databases("sqlite"), pytest.mark.slurm]

SECRET = "a-webhook-secret-of-alice-0123456789"


def submit(daemon, user, script, **fields):
    answer = daemon.post("/api/slurm/jobs/submit", user=user,
                         json={"jobName": fields.pop("name", "notify"), "script": script, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobId"]


def inbox(daemon, user, **params):
    answer = daemon.get("/api/v2/notifications", user=user, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def finished_events(daemon, user):
    return {n["jobId"]: n for n in inbox(daemon, user, limit=1000)["notifications"] if n["type"] == "job.finished"}


def test_failing_timed_out_and_cancelled_jobs_notify_by_inbox_mail_and_webhook(daemon_factory, shared_dir,
                                                                               slurm_conf):
    mail, hook = MailServer().start(), WebhookReceiver().start()
    try:
        config = jobs_config(shared_dir, slurm_conf)
        config["notifications"] = {"smtp_host": "127.0.0.1", "smtp_port": mail.port,
                                   "from": "portal@cluster.example", "webhook_prefixes": [hook.url + "/hooks/"]}
        daemon = daemon_factory(config)
        # The token's email claim is the default address.
        from support.daemon import auth_headers
        me = daemon.get("/api/v2/me/notifications", headers=auth_headers("alice", email="alice@lab.example"))
        assert me.status_code == 200 and me.json()["email"]["address"] == "alice@lab.example", me.text
        refused = daemon.request("PUT", "/api/v2/me/notifications", user="alice",
                                 json={"webhook": {"url": "http://169.254.169.254/latest"}})
        assert refused.status_code == 400 and "prefixes" in refused.json()["message"], refused.text
        saved = daemon.request("PUT", "/api/v2/me/notifications", user="alice",
                               json={"webhook": {"url": hook.url + "/hooks/alice", "secret": SECRET},
                                     "events": ["job.finished"]})
        assert saved.status_code == 200, saved.text
        assert saved.json()["webhook"]["url"] == hook.url + "/hooks/alice"

        timed_out = submit(daemon, "alice", "#!/bin/bash\nsleep 300\n", name="slow 결과", time="1")
        failing = submit(daemon, "alice", "#!/bin/bash\necho broken >&2\nexit 3\n", name="broken")
        cancelled = submit(daemon, "alice", "#!/bin/bash\nsleep 300\n", name="cancel me")
        wait_for(lambda: daemon.get(f"/api/slurm/jobs/{cancelled}", user="alice").json()["state"] == "RUNNING",
                 timeout=60, message="the job to cancel to run")
        assert daemon.delete(f"/api/slurm/jobs/{cancelled}", user="alice").status_code == 200

        # Slurm checks time limits about every 30 s: the time-limit job ends within ~100 s.
        events = wait_for(lambda: (lambda e: e if len(e) == 3 else None)(finished_events(daemon, "alice")),
                          timeout=150, interval=1, message="three job.finished notifications")
        assert events[failing]["title"].startswith(f"Job {failing} (broken) failed")
        assert "failed with exit code 3" in events[failing]["message"]
        assert events[timed_out]["message"].startswith(f"Job {timed_out} (slow 결과) hit its 1 min time limit")
        assert "was cancelled" in events[cancelled]["message"]
        states = [n for n in inbox(daemon, "alice", limit=1000)["notifications"] if n["type"] == "job.state"]
        assert {(n["jobId"]) for n in states} >= {failing, timed_out, cancelled}

        # One e-mail and one signed webhook call per finished job (delivered within seconds).
        wait_for(lambda: len(mail.messages) >= 3 and len(hook.calls) >= 3, timeout=30, message="deliveries")
        subjects = sorted(m["subject"] for m in mail.messages)
        assert len(subjects) == 3, subjects
        for job_id, state in ((failing, "FAILED"), (timed_out, "TIMEOUT"), (cancelled, "CANCELLED")):
            assert sum(f"Job {job_id} {state}" in s for s in subjects) == 1, subjects
        assert all(m["to"] == ["alice@lab.example"] for m in mail.messages)
        assert "http" not in " ".join(m["body"] for m in mail.messages)  # link-free
        assert len(hook.calls) == 3
        for call in hook.calls:
            expected = "sha256=" + hmac.new(SECRET.encode(), call["body"], hashlib.sha256).hexdigest()
            assert call["headers"]["X-Hpcportal-Signature"] == expected
            assert call["headers"]["X-Hpcportal-Event"] == "job.finished"
            assert set(call["json"]) == {"type", "user", "time", "data"} and call["json"]["user"] == "alice"
            data = call["json"]["data"]
            assert {"jobId", "name", "state", "exitCode", "message"} <= set(data)
        by_job = {c["json"]["data"]["jobId"]: c["json"]["data"] for c in hook.calls}
        assert by_job[failing]["exitCode"] == "3:0" and by_job[failing]["state"] == "FAILED"
        prefs = daemon.get("/api/v2/me/notifications", user="alice").json()
        assert {d["status"] for d in prefs["deliveries"]} == {"sent"} and prefs["lastError"] is None

        # The inbox: newest first, paged, unread counts, marking read.
        page = inbox(daemon, "alice", limit=2)
        assert len(page["notifications"]) == 2 and page["unread"] == page["total"] >= 6
        ids = [n["id"] for n in inbox(daemon, "alice", limit=1000)["notifications"]]
        assert ids == sorted(ids, reverse=True)
        marked = daemon.post("/api/v2/notifications/read", user="alice", json={"ids": ids[:2]})
        assert marked.status_code == 200 and marked.json()["marked"] == 2, marked.text
        assert inbox(daemon, "alice")["unread"] == len(ids) - 2
        assert daemon.post("/api/v2/notifications/read", user="bob", json={"all": True}).json()["marked"] == 0
        assert inbox(daemon, "alice")["unread"] == len(ids) - 2  # bob cannot touch alice's
        assert daemon.post("/api/v2/notifications/read", user="alice", json={"all": True}).json()["unread"] == 0
        assert inbox(daemon, "bob")["notifications"] == []
        for body in ({}, {"ids": "1"}, {"all": False}, {"ids": [1], "all": True}, {"ids": [True]}):
            answer = daemon.post("/api/v2/notifications/read", user="alice", json=body)
            assert answer.status_code == 400 and answer.json()["success"] is False, (body, answer.text)
    finally:
        mail.stop()
        hook.stop()


def test_a_job_pending_for_resources_past_the_warning_gets_job_waiting(daemon_factory, shared_dir, slurm_conf):
    config = jobs_config(shared_dir, slurm_conf)
    config["notifications"] = {"pending_warning": "2s"}
    daemon = daemon_factory(config)
    # The whole node for one job: the next one waits for resources.
    hog = submit(daemon, "bob", "#!/bin/bash\nsleep 120\n", name="whole node", cpus=64)
    waiting = submit(daemon, "alice", "#!/bin/bash\ntrue\n", name="queued")
    try:
        events = wait_for(lambda: [n for n in inbox(daemon, "alice")["notifications"] if n["type"] == "job.waiting"],
                          timeout=60, interval=1, message="a job.waiting notification")
        assert len(events) == 1 and events[0]["jobId"] == waiting
        assert "has been waiting for" in events[0]["message"] and "resources short" in events[0]["message"]
    finally:
        daemon.delete(f"/api/slurm/jobs/{hog}", user="bob")
        daemon.delete(f"/api/slurm/jobs/{waiting}", user="alice")
