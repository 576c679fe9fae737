"""Slurm backends for tests: the job tests run through the commands and through slurmrestd.

Loaded as a pytest plugin by ``tests/conftest.py``. ``slurm_backend`` is the
``slurm`` settings ``daemon_factory`` gives its daemons: ``{"backend": "cli"}``, or
``{"backend": "rest", ...}`` with the local slurmrestd's address and key (from
``SLURM_REST_URL``/``SLURM_JWT_KEY_FILE`` or ``scripts/dev-slurm start``); None for
tests not marked. ``@pytest.mark.slurm_backends("cli", "rest")`` (on a module or a
test; the closest wins) runs a test once per backend. REST runs on one database,
SQLite where the test runs on it: the database does not change what the backend
does, and the suite stays short.
"""

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from .slurm import REPO
from .waiting import wait_for

NAMES = ("SLURM_CONF", "SLURM_REST_URL", "SLURM_JWT_KEY_FILE")


def dev_slurm_environment():
    """SLURM_CONF, SLURM_REST_URL and SLURM_JWT_KEY_FILE, from the environment or from
    ``scripts/dev-slurm start`` (which leaves a running cluster alone)."""
    if all(os.environ.get(n) for n in NAMES):
        return {n: os.environ[n] for n in NAMES}
    answer = subprocess.run([os.path.join(REPO, "scripts", "dev-slurm"), "start"], capture_output=True,
                            text=True, timeout=900)
    assert answer.returncode == 0, answer.stderr[-3000:]
    found = {}
    for word in answer.stdout.split():
        name, _, value = word.partition("=")
        if name in NAMES:
            found[name] = value
    assert set(found) == set(NAMES), f"scripts/dev-slurm printed {answer.stdout!r}"
    return found


def rest_settings():
    found = dev_slurm_environment()
    return {"backend": "rest", "rest_url": found["SLURM_REST_URL"], "jwt_key_file": found["SLURM_JWT_KEY_FILE"]}


class UnixSocketRestd:
    """A second slurmrestd of the local cluster, listening on a unix socket only (as the
    Ansible role runs it); ``path`` is known before ``start``."""

    def __init__(self, conf):
        self.conf = conf
        self.folder = tempfile.mkdtemp(prefix="hpcportal-restd-")
        os.chown(self.folder, pwd.getpwnam("slurmrest").pw_uid, 0)
        self.path = os.path.join(self.folder, "slurmrestd.socket")
        self.proc = None

    def start(self):
        log = open(os.path.join(self.folder, "log"), "ab")
        self.proc = subprocess.Popen(["/usr/sbin/slurmrestd", "-f", self.conf, "-a", "rest_auth/jwt",
                                      "-s", "openapi/v0.0.38", "-u", "slurmrest", f"unix:{self.path}"],
                                     env={**os.environ, "SLURM_JWT": "daemon"}, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: os.path.exists(self.path), timeout=30, message="slurmrestd's unix socket")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        if os.path.exists(self.path):
            os.unlink(self.path)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm_backends(*names): run this test through each Slurm backend "
                                       "named (cli, rest)")


def pytest_generate_tests(metafunc):
    if "slurm_backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("slurm_backends")
    if marker is None:
        return
    metafunc.parametrize("slurm_backend", marker.args, indirect=True, ids=[f"slurm-{n}" for n in marker.args])


def pytest_collection_modifyitems(config, items):
    # A test runs through slurmrestd on one database: SQLite, or the first it runs on
    # when it needs a server (the multi-head tests).
    databases = {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("slurm_backend") == "rest":
            databases.setdefault(item.nodeid.split("[")[0], []).append(params.get("db_url", "sqlite"))
    chosen = {test: "sqlite" if "sqlite" in kinds else kinds[0] for test, kinds in databases.items()}
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (params.get("slurm_backend") == "rest"
                and params.get("db_url", "sqlite") != chosen[item.nodeid.split("[")[0]]):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def slurm_backend(request):
    name = getattr(request, "param", None)
    if name is None:
        return None
    return rest_settings() if name == "rest" else {"backend": name}
