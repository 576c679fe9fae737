"""Notification messages in plain words, from Slurm's own state values and fields.

The local Slurm enforces no memory limit (TaskPlugin=task/none), so a real
OUT_OF_MEMORY job cannot be made in the tests: its message is tested here.
"""

import pytest

from types import SimpleNamespace

from hpcportal.notifications import messages
from hpcportal.notifications.stream import StreamHub
from hpcportal.notifications.webhook import signature

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("state,fields,expected", [
    ("OUT_OF_MEMORY", {"memory_asked": "16G", "elapsed": 2 * 3600 + 10 * 60},
     "ran out of its 16 GB of memory after 2 h 10 min; ask for more memory"),
    ("OUT_OF_MEMORY", {"memory_asked": "512M", "elapsed": 45}, "ran out of its 512 MB of memory after 45 s"),
    ("OUT_OF_MEMORY", {}, "ran out of its memory; ask for more memory"),
    ("TIMEOUT", {"time_asked": "01:00:00", "elapsed": 3600}, "hit its 1 h time limit"),
    ("TIMEOUT", {"time_asked": "1-12:00:00"}, "hit its 1 d 12 h time limit"),
    ("TIMEOUT", {"time_asked": "1"}, "hit its 1 min time limit"),
    ("FAILED", {"exit_code": "3:0", "elapsed": 5}, "failed with exit code 3 after 5 s"),
    ("FAILED", {"exit_code": "0:9"}, "was killed by SIGKILL"),
    ("FAILED", {"exit_code": "2"}, "failed with exit code 2"),
    ("COMPLETED", {"exit_code": "0:0", "elapsed": 90}, "finished successfully after 1 min 30 s"),
    ("CANCELLED", {"exit_code": "0:15", "elapsed": 61}, "was cancelled after 1 min 1 s"),
    ("NODE_FAIL", {}, "because a node it ran on failed"),
])
def test_each_finished_state_is_explained(state, fields, expected):
    assert expected in messages.job_finished(state, **fields)


def test_waiting_reasons_in_words_and_only_for_resources_or_limits():
    assert messages.waiting_reason("Resources") == "the nodes it needs are busy"
    assert "limit" in messages.waiting_reason("QOSMaxJobsPerUserLimit")
    assert "limit" in messages.waiting_reason("AssocGrpCPUMinutesLimit")
    for choice in ("Dependency", "BeginTime", "JobHeldUser", "None", "", None):
        assert messages.waiting_reason(choice) is None
    text = messages.job_waiting(35 * 60, "Resources")
    assert text == "has been waiting for 35 min: resources short (the nodes it needs are busy)"


def test_durations_and_sizes_read_like_a_person_writes_them():
    assert [messages.duration(s) for s in (0, 59, 60, 61, 3600, 7800, 86400 + 3600)] == [
        "0 s", "59 s", "1 min", "1 min 1 s", "1 h", "2 h 10 min", "1 d 1 h"]
    assert messages.memory("16G") == "16 GB" and messages.memory("1536M") == "1.5 GB"
    assert messages.memory(None) is None and messages.time_limit("UNLIMITED") is None


def test_the_webhook_signature_is_hmac_sha256_of_the_body():
    # RFC 4231 test case 2: key "Jefe".
    assert signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_the_stream_poll_sends_an_event_whose_id_committed_late_once():
    # Two heads' transactions commit in any order: id 11 is seen after 12.
    hub = StreamHub(None, None, max_streams=1, max_per_user=1, heartbeat=15)
    hub._cursor = 10
    ids = lambda events: [e.id for e in events]  # noqa: E731
    event = lambda n: SimpleNamespace(id=n, user="alice")  # noqa: E731
    assert ids(hub._new([event(12)])) == [12]
    assert hub._gaps.keys() == {11}
    assert ids(hub._new([event(11), event(12), event(13)])) == [11, 13]
    assert ids(hub._new([event(11), event(12), event(13)])) == [] and not hub._gaps
