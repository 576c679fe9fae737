"""Shared fixtures: real unix users, a temporary shared tree, real daemons.

- ``users``: ensures the unix accounts ``alice`` (uid 2001) and ``bob`` (2002).
- ``shared_dir``: a fresh ``SharedTree`` (``.root``, ``.images``, ``.templates``,
  ``.uploads``, ``.state``) under /tmp/hpcportal-tests, removed afterwards.
- ``daemon_factory(config=None, env=None, shared=None, start=True)``: starts
  ``hpcportald serve`` subprocesses; all are stopped at teardown. Several
  daemons may share one ``SharedTree`` (and so one SQLite file).
- ``daemon``: one running daemon on ``shared_dir`` with default test settings.
- ``make_token`` / ``auth_headers``: tokens signed with the test secret.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from support.daemon import Daemon, SharedTree, auth_headers, deep_merge, make_token  # noqa: E402
from support.users import ensure_test_users  # noqa: E402

# db_url: each test using daemons runs on SQLite and MariaDB (see support/databases.py);
# unitguard: tests marked unit start no daemon and use no Slurm or database server.
# backends: job tests marked slurm_backends run through the commands and through slurmrestd.
pytest_plugins = ["support.databases", "support.unitguard", "support.backends"]


@pytest.fixture(scope="session")
def users():
    return ensure_test_users()


@pytest.fixture
def shared_dir():
    tree = SharedTree()
    yield tree
    tree.cleanup()


@pytest.fixture
def daemon_factory(shared_dir, users, db_url, slurm_backend):
    started = []

    def factory(config=None, env=None, shared=None, start=True):
        if db_url:
            config = {"database": {"url": db_url}, **(config or {})}
        if slurm_backend:
            config = deep_merge({"slurm": slurm_backend}, config)
        daemon = Daemon(shared or shared_dir, config=config, env=env)
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield factory
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


@pytest.fixture(name="make_token")
def make_token_fixture():
    return make_token


@pytest.fixture(name="auth_headers")
def auth_headers_fixture():
    return auth_headers
