"""The ``unit`` tier stays in this process (a pytest plugin loaded by tests/conftest.py).

A test marked ``unit`` fails if it asks for a fixture that starts a daemon, a
database on a server or Slurm, or if anything it sets up starts a
``hpcportald serve`` subprocess (module fixtures that build ``Daemon`` objects
themselves included). So ``pytest -m unit`` is fast and needs none of them,
which is the point of the tier.
"""

import pytest

from .daemon import Daemon

FORBIDDEN_FIXTURES = {"daemon", "daemon_factory", "db_url", "slurm_conf"}

_unit_test = []  # the unit test being set up, run or torn down, if any


def _guarded_start(start):
    def guarded(self, *args, **kwargs):
        if _unit_test:
            raise AssertionError(f"{_unit_test[0]} is marked unit but starts a daemon process")
        return start(self, *args, **kwargs)
    return guarded


def pytest_configure(config):
    if not getattr(Daemon.start, "unit_guard", False):
        Daemon.start = _guarded_start(Daemon.start)
        Daemon.start.unit_guard = True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("unit") is None:
        return
    used = sorted(FORBIDDEN_FIXTURES & set(getattr(item, "fixturenames", ())))
    if used:
        pytest.fail(f"{item.nodeid} is marked unit but uses {', '.join(used)}", pytrace=False)
    _unit_test[:] = [item.nodeid]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    _unit_test.clear()
