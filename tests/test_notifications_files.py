"""Upload, quota and template events: upload.completed, quota.warning past 80 % of
uploads.user_quota, upload.expired from the clean-up, template.invalid for a user's own folder."""

import os

import pytest

from support.uploads import init, upload
from support.waiting import wait_for

pytestmark = pytest.mark.databases("sqlite")


def events_of(daemon, user, kind):
    answer = daemon.get("/api/v2/notifications", user=user, params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return [n for n in answer.json()["notifications"] if n["type"] == kind]


def test_upload_quota_expiry_and_template_events(daemon_factory, shared_dir):
    daemon = daemon_factory({"uploads": {"user_quota": 10000, "expire_after": "2s", "cleanup_interval": "1s"}})

    small = upload(daemon, "alice", b"x" * 1000, filename="결과 파일.csv")
    completed = events_of(daemon, "alice", "upload.completed")
    assert len(completed) == 1 and "결과 파일.csv" in completed[0]["message"], completed
    assert events_of(daemon, "alice", "quota.warning") == []  # 10 % of the quota
    upload(daemon, "alice", b"y" * 7500, filename="big.bin")
    warned = events_of(daemon, "alice", "quota.warning")
    assert len(warned) == 1 and "(85 %)" in warned[0]["message"], warned
    upload(daemon, "alice", b"z" * 100, filename="more.bin")
    assert len(events_of(daemon, "alice", "quota.warning")) == 1  # once a day, not per upload
    assert events_of(daemon, "bob", "upload.completed") == [] and small["filename"] == "결과 파일.csv"

    started = init(daemon, "bob", "never finished.bin", 500)
    assert started.status_code == 201, started.text
    expired = wait_for(lambda: events_of(daemon, "bob", "upload.expired"), timeout=30,
                       message="the upload.expired event")
    assert len(expired) == 1 and "never finished.bin" in expired[0]["message"]

    folder = os.path.join(shared_dir.templates, "users", "alice")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "broken.yaml"), "w") as handle:
        handle.write("name: [unclosed\n")
    invalid = wait_for(lambda: events_of(daemon, "alice", "template.invalid"), timeout=30,
                       message="the template.invalid event")
    assert len(invalid) == 1 and invalid[0]["title"] == "Your template broken.yaml is invalid", invalid
    assert events_of(daemon, "bob", "template.invalid") == []


def test_notifications_are_removed_after_the_retention(daemon_factory):
    daemon = daemon_factory({"notifications": {"retention": "3s"}})
    upload(daemon, "alice", b"x" * 10, filename="short-lived.txt")
    assert len(events_of(daemon, "alice", "upload.completed")) == 1
    wait_for(lambda: daemon.get("/api/v2/notifications", user="alice").json()["total"] == 0, timeout=30,
             message="the notification to be removed")
