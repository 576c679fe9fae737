"""The ``hpcportal`` command and the SDK against one real daemon shared by a test module.

``portal_daemon(slurm_conf)``: a context manager giving a daemon on a fresh shared
tree, set up for jobs on the local Slurm (with the apptainer stand-in).
``portal`` (module fixture): that daemon, for a test module that imports it with
``slurm_conf`` (from support.slurm).
``run_cli(daemon, *args, user="alice", env=None, cache=...)``: runs
``python -m hpcportal.client`` as a user would (URL and token from PORTAL_URL /
PORTAL_TOKEN), returning the finished process.
``upload_bytes(daemon)``: the daemon's count of chunk-protocol bytes written.
"""

import contextlib
import os
import re
import subprocess
import sys

import pytest
import requests

from .daemon import REPO, Daemon, SharedTree, make_token
from .slurm import jobs_config
from .users import ensure_test_users

MiB = 1024 * 1024


@contextlib.contextmanager
def portal_daemon(slurm_conf):
    ensure_test_users()
    tree = SharedTree()
    daemon = Daemon(tree, config=jobs_config(tree, slurm_conf))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        tree.cleanup()


@pytest.fixture(scope="module")
def portal(slurm_conf):
    with portal_daemon(slurm_conf) as daemon:
        yield daemon


def cli_env(daemon, user="alice", cache=None, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCPORTAL_", "PORTAL_"))}
    env.update(PORTAL_URL=daemon.url, PORTAL_TOKEN=make_token(user), PYTHONIOENCODING="utf-8")
    if cache:
        env["XDG_CACHE_HOME"] = cache
    env.update({k: v for k, v in extra.items() if v is not None})
    return {k: v for k, v in env.items() if v != ""}


def cli_command(*args):
    return [sys.executable, "-m", "hpcportal.client", *args]


def run_cli(daemon, *args, user="alice", cache=None, timeout=120, stdin=None, **env):
    return subprocess.run(cli_command(*args), env=cli_env(daemon, user, cache, **env), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def upload_bytes(daemon):
    text = requests.get(daemon.url + "/metrics", timeout=10).text
    found = re.search(r'^hpcportal_upload_bytes_received_total\{protocol="chunk"\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def write_random(path, size):
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))
    return path
