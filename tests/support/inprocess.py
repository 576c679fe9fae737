"""The portal's app in this process, for the fast ``unit`` tier.

``inprocess(config)`` is a context manager: a temporary shared tree, a SQLite
file and a secret file in it, ``create_app(config)`` on them, and falcon's
``TestClient`` to speak HTTP to the app without a socket. Only the public entry
``create_app`` and HTTP are used, so the tests do not depend on how the app is
wired inside.

No background service is started (watcher, janitor, job monitor, audit
writer): the audit trail then stores each record at once, and the catalogs are
filled by an administrator's scan (``portal.scan("templates")``). Slurm's
folder is an empty one, so whatever would run a Slurm command answers 503
``slurm_missing``: a request must be refused with a 400 before Slurm is asked.
"""

import contextlib
import os

import falcon.testing

from hpcportal import db as dbmod
from hpcportal.app import create_app
from hpcportal.config import Config

from .daemon import TEST_SECRET, SharedTree, UserRequests, auth_headers, deep_merge
from .users import ensure_test_users

SCAN_PATHS = {"images": "/api/v2/apptainer/scan", "templates": "/api/v2/templates/scan"}


class InProcess(UserRequests):
    """One app and its client; ``request`` adds a user's token like ``Daemon.request``."""

    def __init__(self, app, config, shared):
        self.app = app
        self.config = config
        self.shared = shared
        self.client = falcon.testing.TestClient(app)

    def request(self, method, path, user=None, admin=False, headers=None, **kwargs):
        headers = dict(headers or {})
        if user:
            headers = {**auth_headers(user, admin=admin), **headers}
        return self.client.simulate_request(method, path, headers=headers, **kwargs)

    def scan(self, kind):
        """Index the ``images`` or ``templates`` folder now, as an administrator would."""
        answer = self.post(SCAN_PATHS[kind], user="alice", admin=True)
        if answer.status_code != 200:
            raise AssertionError(f"scan of {kind} answered {answer.status_code}: {answer.text}")
        return answer.json


def unit_config(shared, extra=None):
    """The settings of an in-process portal on ``shared``; ``extra`` overrides them."""
    secret_file = os.path.join(shared.state, "jwt-secret")
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(TEST_SECRET + "\n")
    no_slurm = os.path.join(shared.state, "no-slurm-here")
    os.makedirs(no_slurm, exist_ok=True)
    base = {
        "paths": {"images": shared.images, "templates": shared.templates, "uploads": shared.uploads},
        "database": {"url": f"sqlite:///{shared.state}/portal.db"},
        "auth": {"secret_file": secret_file},
        "slurm": {"bin_dir": no_slurm, "conf": None},
        # Tests write a catalog file and scan at once; it will not change afterwards.
        "catalog": {"settle_seconds": 0},
        # Many requests by one user in a few milliseconds: the limits would answer 429
        # to tests that are not about them.
        "security": {"rate_limits": {"submit": 0, "upload_init": 0, "scan": 0}},
    }
    # env={}: HPCPORTAL_* variables of the shell running the tests must not change them.
    return Config.from_dict(deep_merge(base, extra), env={})


_open = []  # the portal now open in this process, if any


@contextlib.contextmanager
def inprocess(config=None):
    """An ``InProcess`` portal on a fresh shared tree, removed afterwards.

    One at a time: the database models are bound once per process, so a
    second app would take them over from the first."""
    if _open:
        raise RuntimeError("an in-process portal is already open; close it before opening another")
    ensure_test_users()
    _open.append(True)
    shared = SharedTree()
    try:
        settings = unit_config(shared, config)
        app = create_app(settings)
        dbmod.upgrade(app.portal.database)
        try:
            yield InProcess(app, settings, shared)
        finally:
            app.portal.database.close()
    finally:
        shared.cleanup()
        _open.clear()
