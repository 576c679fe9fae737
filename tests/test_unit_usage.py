"""What a job requested, from accounting's record where it knows and the controller where not."""

import types

import pytest

from hpcportal.jobs.usage import _requested

pytestmark = pytest.mark.unit

GIB = 1024 ** 3
ROW = types.SimpleNamespace(cpus=1, memory="1G")
LIVE = {"cpus": 1, "tres": "cpu=1,mem=1G,node=1,billing=1", "time_limit": 10}


def test_a_record_slurmdbd_has_not_completed_yet_borrows_the_controllers_figures():
    # sacct a moment after the job started: the job is there, its allocation not yet.
    early = {"alloc_cpus": 0, "cpus": 0, "memory_bytes": None, "time_seconds": None}
    assert _requested(early, LIVE, ROW) == {"cpus": 1, "memoryBytes": GIB, "timeSeconds": 600}


def test_accountings_figures_win_where_it_has_them():
    record = {"alloc_cpus": 2, "cpus": 2, "memory_bytes": 2 * GIB, "time_seconds": 1200}
    assert _requested(record, LIVE, ROW) == {"cpus": 2, "memoryBytes": 2 * GIB, "timeSeconds": 1200}


def test_without_accounting_the_controllers_figures_are_the_answer():
    assert _requested(None, LIVE, ROW) == {"cpus": 1, "memoryBytes": GIB, "timeSeconds": 600}
