"""The shared snapshot of every job (slurm/backend.py): one refresh for a burst of callers,
and no request held up by a slow refresh while a recent snapshot can answer.

Against real Slurm, through both backends: tests/test_jobs_watch.py and the job tests."""

import threading
import time

import pytest

from hpcportal.slurm.backend import STALE_GRACE, SlurmBackend

pytestmark = pytest.mark.unit


class SlowCluster(SlurmBackend):
    """A backend whose job list takes ``seconds`` to come, as slurmrestd's does with
    thousands of jobs; it counts how often it is asked."""

    name = "slow"

    def __init__(self, seconds, **caches):
        super().__init__(**caches)
        self.seconds = seconds
        self.fetches = 0

    def _fetch_jobs(self):
        self.fetches += 1
        time.sleep(self.seconds)
        return [{"job_id": str(self.fetches), "comment": f"hpcportal:{self.fetches}"}]


def at_once(count, call):
    results, start = [], threading.Barrier(count)

    def run():
        start.wait()
        results.append(call())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_callers_waiting_for_a_refresh_take_its_answer():
    """A refresh slower than squeue_interval: before, each waiting caller found the new
    snapshot already older than the interval and refreshed again, one after another."""
    cluster = SlowCluster(0.3, squeue_interval=0.1)
    snapshots = at_once(5, cluster.snapshot)
    assert cluster.fetches == 1 and len({id(s) for s in snapshots}) == 1


def test_a_request_answers_from_a_recent_snapshot_and_a_refresh_starts_behind_it():
    cluster = SlowCluster(0.5, squeue_interval=0.1)
    first = cluster.snapshot()
    time.sleep(0.2)  # stale now
    started = time.monotonic()
    answers = at_once(5, lambda: cluster.snapshot(wait=False))
    assert all(a is first for a in answers) and time.monotonic() - started < 0.3
    deadline = time.monotonic() + 5
    while cluster.snapshot_age() is None or cluster.snapshot() is first:
        assert time.monotonic() < deadline, "no refresh started behind the answers"
        time.sleep(0.05)
    assert cluster.fetches == 2  # one refresh for the five


def test_a_request_waits_for_a_quick_refresh():
    """On a cluster whose snapshot comes quickly a job list stays up to date."""
    cluster = SlowCluster(0.01, squeue_interval=0.1)
    first = cluster.snapshot()
    time.sleep(0.2)
    assert cluster.snapshot(wait=False) is not first and cluster.fetches == 2


def test_a_background_caller_waits_for_the_refresh():
    cluster = SlowCluster(0.3, squeue_interval=0.1)
    first = cluster.snapshot()
    time.sleep(0.2)
    assert cluster.snapshot() is not first and cluster.fetches == 2


def test_a_caller_that_needs_a_fresh_snapshot_waits_for_one_taken_after_it_asked():
    """Finding a submission whose answer was lost: a refresh begun before the call may
    miss the job, so the caller gets one begun after it asked."""
    cluster = SlowCluster(0.3, squeue_interval=0.1)
    cluster.snapshot()
    refresher = threading.Thread(target=cluster.snapshot, kwargs={"max_age": 0.05})
    time.sleep(0.1)
    refresher.start()
    time.sleep(0.05)
    asked = time.monotonic()
    fresh = cluster.snapshot(max_age=0)
    refresher.join()
    assert fresh.taken >= asked and cluster.fetches == 3


def test_a_snapshot_far_past_its_age_does_not_answer_a_request():
    now = [1000.0]
    cluster = SlowCluster(0.3, squeue_interval=1, clock=lambda: now[0])
    old = cluster.snapshot()
    now[0] += 1 + STALE_GRACE + 1
    results = at_once(3, lambda: cluster.snapshot(wait=False))
    assert all(r is not old for r in results) and cluster.fetches == 2


class Accounting(SlowCluster):
    """Accounting that knows every job as finished, with no exit code (as slurmdbd's
    REST API tells it on Slurm 22.05)."""

    def finished(self, job_ids):
        self.asked = list(job_ids)
        return {job_id: {"state": "FAILED", "exit_code": None} for job_id in job_ids}


def test_the_monitor_does_not_take_a_job_newer_than_the_snapshot_for_forgotten(tmp_path):
    """A snapshot asked for before a job was submitted does not show it: that job is not
    one Slurm forgot, and accounting's word (a state without its exit code) must not
    stand in for the snapshot's, which a later pass reads."""
    import datetime
    import types

    import peewee

    from hpcportal.jobs.monitor import JobMonitor
    from hpcportal.models.base import utcnow
    from hpcportal.models.jobs import Job

    database = peewee.SqliteDatabase(str(tmp_path / "jobs.db"))
    with database.bind_ctx([Job]):
        database.create_tables([Job])
        cluster = Accounting(0, squeue_interval=1)
        snapshot = cluster.snapshot()  # shows job "1" only
        old = dict(user="alice", uid=1001, name="old", job_dir="/x", script_path="/x/s")
        Job.create(submission_id="a" * 32, slurm_job_id="7", submitted_at=utcnow() - datetime.timedelta(hours=1),
                   **old)
        Job.create(submission_id="b" * 32, slurm_job_id="8", submitted_at=utcnow() + datetime.timedelta(seconds=1),
                   **old)
        service = types.SimpleNamespace(backends=types.SimpleNamespace(current=lambda: cluster))
        JobMonitor(service, database, interval=1).record_states(snapshot, cluster)
        assert cluster.asked == ["7"]
        assert {j.slurm_job_id: j.state for j in Job.select()} == {"7": "FAILED", "8": "PENDING"}


def test_a_refresh_that_fails_behind_a_request_is_told_to_the_next_one():
    """Answering from the last snapshot must not hide an outage: once the refresh behind
    it fails, requests get Slurm's failure, as they would have waiting for it."""
    from hpcportal.slurm.runner import SlurmUnavailable

    cluster = SlowCluster(0.3, squeue_interval=0.5)  # slow: requests answer from the last snapshot
    first = cluster.snapshot()
    cluster._fetch_jobs = lambda: (_ for _ in ()).throw(SlurmUnavailable("Slurm controller is not reachable"))
    time.sleep(0.6)
    assert cluster.snapshot(wait=False) is first  # and the refresh behind it fails
    deadline = time.monotonic() + 5
    while True:
        try:
            cluster.snapshot(wait=False)
        except SlurmUnavailable as exc:
            assert "not reachable" in exc.message
            break
        assert time.monotonic() < deadline, "the failed refresh was never told"
        time.sleep(0.02)
