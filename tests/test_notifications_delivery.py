"""E-mail and webhook delivery across heads: once, even when a head dies, retried when
the mail server is down, given up after a bounded number of tries (and shown)."""

import datetime
import socket

import pytest

from support.daemon import free_port
from support.receivers import MailServer, WebhookReceiver
from support.slurm import jobs_config, slurm_conf, wait_for  # noqa: F401

pytestmark = [pytest.mark.slurm]


def notify_config(shared_dir, slurm_conf, **notifications):
    config = jobs_config(shared_dir, slurm_conf)
    config["notifications"] = {"from": "portal@cluster.example", **notifications}
    return config


def failing_job(head, user="alice", name="fails"):
    answer = head.post("/api/slurm/jobs/submit", user=user,
                       json={"jobName": name, "script": "#!/bin/bash\nexit 7\n"})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobId"]


def use_address(head, user="alice"):
    answer = head.request("PUT", "/api/v2/me/notifications", user=user,
                          json={"email": {"enabled": True, "address": f"{user}@lab.example"}})
    assert answer.status_code == 200, answer.text


def deliveries(head, user="alice"):
    return head.get("/api/v2/me/notifications", user=user).json()["deliveries"]


@pytest.mark.databases("mariadb")
def test_two_heads_send_one_email_per_event(daemon_factory, shared_dir, slurm_conf):
    mail = MailServer().start()
    try:
        config = notify_config(shared_dir, slurm_conf, smtp_host="127.0.0.1", smtp_port=mail.port)
        a, b = daemon_factory(config), daemon_factory(config)
        use_address(a)
        first = failing_job(a, name="first")
        wait_for(lambda: len(mail.messages) >= 1, timeout=60, message="the first e-mail")
        # Both heads poll Slurm and the deliveries every few seconds: by the time a second job's
        # e-mail came, a duplicate of the first would have come too.
        second = failing_job(b, name="second")
        wait_for(lambda: any(f"Job {second} " in m["subject"] for m in mail.messages), timeout=60,
                 message="the second e-mail")
        subjects = [m["subject"] for m in mail.messages]
        assert sum(f"Job {first} FAILED" in s for s in subjects) == 1, subjects
        assert sum(f"Job {second} FAILED" in s for s in subjects) == 1, subjects
        for head in (a, b):
            events = head.get("/api/v2/notifications", user="alice").json()["notifications"]
            assert sorted(e["jobId"] for e in events if e["type"] == "job.finished") == sorted([first, second])
        # The first attempt comes within 10 s of the event (createdAt is to the second).
        finished = {e["jobId"]: e for e in events if e["type"] == "job.finished"}
        for message in mail.messages:
            job_id = message["subject"].split()[2]
            created = datetime.datetime.fromisoformat(finished[job_id]["createdAt"].replace("Z", "+00:00"))
            assert message["at"] - created.timestamp() < 11, (message, finished[job_id])
    finally:
        mail.stop()


@pytest.mark.databases("mariadb")
def test_a_head_killed_before_delivering_is_replaced_and_the_email_sent_once(daemon_factory, shared_dir,
                                                                             slurm_conf):
    # A mail server that accepts connections and never greets: the first head hangs in its attempt.
    silent = socket.create_server(("127.0.0.1", 0))
    mail = MailServer().start()
    try:
        a = daemon_factory(notify_config(shared_dir, slurm_conf, smtp_host="127.0.0.1",
                                         smtp_port=silent.getsockname()[1], claim_timeout="3s"))
        use_address(a)
        job_id = failing_job(a)
        wait_for(lambda: [d["attempts"] for d in deliveries(a)] == [1], timeout=60,
                 message="the first head to claim the e-mail")
        a.kill()
        b = daemon_factory(notify_config(shared_dir, slurm_conf, smtp_host="127.0.0.1", smtp_port=mail.port,
                                         claim_timeout="3s"))
        wait_for(lambda: [d["status"] for d in deliveries(b)] == ["sent"], timeout=60,
                 message="the other head to send it")
        assert [m["subject"] for m in mail.messages] == [f"[hpcportal] Job {job_id} FAILED: fails"]
        assert deliveries(b)[0]["attempts"] == 2
    finally:
        mail.stop()
        silent.close()


@pytest.mark.databases("sqlite")
def test_smtp_down_is_retried_and_a_failing_webhook_given_up_after_its_tries(daemon_factory, shared_dir,
                                                                            slurm_conf):
    port = free_port()  # nobody listens yet: the mail server is down
    hook = WebhookReceiver(status=302).start()  # a redirect is never followed
    mail = MailServer(port)
    try:
        head = daemon_factory(notify_config(shared_dir, slurm_conf, smtp_host="127.0.0.1", smtp_port=port,
                                            retry_backoff="1s", max_tries=4,
                                            webhook_prefixes=[hook.url + "/hooks/"]))
        use_address(head)
        saved = head.request("PUT", "/api/v2/me/notifications", user="bob",
                             json={"email": {"enabled": False}, "webhook": {"url": hook.url + "/hooks/bob"}})
        assert saved.status_code == 200 and len(saved.json()["webhook"]["secret"]) == 64, saved.text
        failing_job(head)
        failing_job(head, user="bob")
        failed = wait_for(lambda: (lambda p: p if p["lastError"] else None)(
            head.get("/api/v2/me/notifications", user="alice").json()), timeout=60, message="a failed attempt")
        assert "e-mail to alice@lab.example" in failed["lastError"]["message"]
        assert failed["deliveries"][0]["status"] == "pending"
        mail.start()
        wait_for(lambda: [d["status"] for d in deliveries(head)] == ["sent"], timeout=60,
                 message="the retried e-mail")
        assert len(mail.messages) == 1 and deliveries(head)[0]["attempts"] >= 2

        gave_up = wait_for(lambda: (lambda p: p if p["deliveries"] and p["deliveries"][0]["status"] == "failed"
                                    else None)(head.get("/api/v2/me/notifications", user="bob").json()),
                           timeout=90, message="the webhook to be given up")
        assert gave_up["deliveries"][0]["attempts"] == 4
        assert "answered HTTP 302" in gave_up["deliveries"][0]["lastError"]
        assert gave_up["lastError"]["message"].startswith("gave up after 4 attempts")
        assert len(hook.calls) == 4 and {c["path"] for c in hook.calls} == {"/hooks/bob"}
    finally:
        mail.stop()
        hook.stop()
