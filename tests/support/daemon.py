"""A real ``hpcportald serve`` in a subprocess, on a free loopback port."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid

import requests
import yaml

from hpcportal.auth import mint_token

from .waiting import wait_for

TEST_SECRET = "test-secret-0123456789-abcdefghijklmnop"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_token(user, admin=False, secret=TEST_SECRET, **claims):
    return mint_token(secret, user, admin=admin, **claims)


def auth_headers(user, admin=False, **claims):
    return {"Authorization": f"Bearer {make_token(user, admin=admin, **claims)}"}


def assert_no_traceback(logs):
    """Fails on a traceback in a daemon's log, showing it with what led to it."""
    assert "Traceback" not in logs, logs[max(0, logs.find("Traceback") - 500):][:5000]


def deep_merge(base, extra):
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class SharedTree:
    """A temporary stand-in for /shared. It lives outside pytest's 0700 tmp
    folders because jobs and uploads are accessed by the test users too."""

    BASE = "/tmp/hpcportal-tests"

    def __init__(self):
        os.makedirs(self.BASE, mode=0o755, exist_ok=True)
        os.chmod(self.BASE, 0o755)
        self.root = tempfile.mkdtemp(prefix="shared-", dir=self.BASE)
        os.chmod(self.root, 0o755)
        self.images = os.path.join(self.root, "apptainer", "images")
        self.templates = os.path.join(self.root, "templates")
        self.uploads = os.path.join(self.root, "uploads")
        self.state = os.path.join(self.root, "state")
        for folder in (os.path.join(self.images, "compute"), os.path.join(self.images, "viz"),
                       os.path.join(self.templates, "official"), self.uploads):
            os.makedirs(folder, mode=0o755, exist_ok=True)
        os.makedirs(self.state, mode=0o700, exist_ok=True)

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)


class UserRequests:
    """``get``/``post``/``delete`` over a ``request(method, path, user=None, **kwargs)``
    that adds the user's token: a daemon over HTTP, or the app in process."""

    def get(self, path, user=None, **kwargs):
        return self.request("GET", path, user=user, **kwargs)

    def post(self, path, user=None, **kwargs):
        return self.request("POST", path, user=user, **kwargs)

    def delete(self, path, user=None, **kwargs):
        return self.request("DELETE", path, user=user, **kwargs)


class Daemon(UserRequests):
    """One daemon process. ``config`` is the nested dict written to its YAML file."""

    def __init__(self, shared, config=None, env=None, name=None):
        self.shared = shared
        self.name = name or uuid.uuid4().hex[:8]
        self.port = free_port()
        base = {
            "server": {"host": "127.0.0.1", "port": self.port, "threads": 8, "log_level": "info"},
            "paths": {"images": shared.images, "templates": shared.templates,
                      "uploads": shared.uploads},
            "database": {"url": f"sqlite:///{shared.state}/portal.db"},
            "auth": {"secret": TEST_SECRET},
            # Tests create files and wait for them: a short settle time keeps them quick.
            "catalog": {"settle_seconds": 0.5, "poll_interval": 0.5},
        }
        self.config = deep_merge(base, config)
        self.config["server"]["port"] = self.port
        self.config_path = os.path.join(shared.state, f"config-{self.name}.yaml")
        self.log_path = os.path.join(shared.state, f"daemon-{self.name}.log")
        with open(self.config_path, "w") as handle:
            yaml.safe_dump(self.config, handle)
        self.env = env or {}
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait=True):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpcportal", "--config", self.config_path, "serve"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        def answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        try:
            wait_for(answers, timeout=timeout, interval=0.05, message="/healthz")
        except AssertionError:
            raise RuntimeError(f"daemon did not answer within {timeout}s:\n{self.logs()}") from None

    def logs(self):
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self):
        self.stop()
        return self.start()

    # Convenience for tests: requests with a user's token.
    def request(self, method, path, user=None, admin=False, **kwargs):
        headers = kwargs.pop("headers", {}) or {}
        if user:
            headers = {**auth_headers(user, admin=admin), **headers}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.url + path, headers=headers, **kwargs)
