"""The loop the background services share: passes that raise, waking, stopping, and the health
a stuck pass gives."""

import logging
import threading

import pytest

from hpcportal.passes import PassLoop
from support.waiting import wait_for

pytestmark = pytest.mark.unit

log = logging.getLogger("hpcportal.test.passes")


def _loop(run_pass, interval=60, **kwargs):
    return PassLoop("test-passes", run_pass, interval=interval, log=log,
                    failure_message="test pass failed", **kwargs)


def _threads_named(name):
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_a_pass_that_raises_is_logged_and_the_loop_goes_on(caplog):
    calls = []

    def run_pass():
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("the first pass breaks")

    loop = _loop(run_pass, interval=0.01)
    with caplog.at_level(logging.ERROR, logger=log.name):
        loop.start()
        try:
            wait_for(lambda: len(calls) >= 3, timeout=10, interval=0.01, message="passes after the failed one")
            assert loop.running()
        finally:
            loop.stop()
    failures = [record for record in caplog.records if record.getMessage() == "test pass failed"]
    assert len(failures) == 1 and failures[0].exc_info[1].args == ("the first pass breaks",)
    assert loop.clock.last is not None  # the failed pass counted as finished too


def test_a_failed_pass_is_retried_sooner_than_the_interval():
    calls = []

    def run_pass():
        calls.append(1)
        raise RuntimeError("always")

    loop = _loop(run_pass, interval=3600, retry_after_failure=0.01)
    loop.start()
    try:
        wait_for(lambda: len(calls) >= 2, timeout=10, interval=0.01, message="the retry")
    finally:
        loop.stop()


def test_the_first_pass_comes_at_start_or_after_an_interval():
    ran = threading.Event()
    at_once = _loop(ran.set)
    at_once.start()
    try:
        assert ran.wait(10)
    finally:
        at_once.stop()

    ran.clear()
    later = _loop(ran.set, wait_first=True)
    later.start()
    try:
        assert not ran.wait(0.2)
        later.wake.set()  # waking stands in for the interval
        assert ran.wait(10)
    finally:
        later.stop()


def test_stop_ends_the_thread_and_start_runs_it_again():
    passes = []
    loop = _loop(lambda: passes.append(1))
    assert not loop.started() and not loop.running()
    loop.start()
    assert loop.running() and len(_threads_named("test-passes")) == 1
    loop.start()  # started already: still one thread
    assert len(_threads_named("test-passes")) == 1
    wait_for(lambda: passes, timeout=10, interval=0.01, message="the first pass")
    loop.stop()
    assert not loop.started() and not loop.running() and _threads_named("test-passes") == []
    loop.start()
    try:
        wait_for(lambda: len(passes) >= 2, timeout=10, interval=0.01, message="a pass after a restart")
    finally:
        loop.stop()


def test_stop_waits_for_a_hung_pass_no_longer_than_its_join_timeout():
    release = threading.Event()
    entered = threading.Event()

    def hung_pass():
        entered.set()
        release.wait(30)

    loop = _loop(hung_pass, join_timeout=0.05)
    loop.start()
    try:
        assert entered.wait(10)
        loop.stop()
        assert not loop.started() and loop.stopping()
    finally:
        release.set()
    wait_for(lambda: not _threads_named("test-passes"), timeout=10, interval=0.01,
             message="the released pass to end its thread")


def test_health_says_a_pass_is_overdue_by_the_clock_given():
    now = [1000.0]
    release = threading.Event()
    loop = _loop(lambda: release.wait(30), interval=5, margin=10, clock=lambda: now[0])
    assert loop.health("idle") == (True, "idle")  # never started: nothing is overdue
    loop.start()
    try:
        assert loop.health("idle", error="Slurm did not answer") == (True, "degraded: Slurm did not answer")
        now[0] += 26  # three intervals and the margin: 25 s
        assert loop.health("idle", error="ignored once stale") == (
            False, "stale: no pass finished since start for 26s (expected within 25s)")
    finally:
        release.set()
        loop.stop()
