"""Database backends for tests: every API test runs on SQLite and on MariaDB.

Loaded as a pytest plugin by ``tests/conftest.py``. It provides:

- ``db_url``: the ``database.url`` the test's daemons use; ``daemon_factory``
  applies it. Tests that use it are parametrised over the backends chosen by
  ``--db-backends`` (or ``PORTAL_TEST_DB_BACKENDS``; default ``sqlite,mariadb``;
  ``postgres`` is supported too). For a server backend each test gets a fresh,
  empty database (``hpcportal_<random>``), dropped afterwards; for ``sqlite`` the
  value is None (the daemon's file in the shared tree).
- ``@pytest.mark.databases("mariadb", "postgres")``: the backends a test
  supports; it runs on those of them that are chosen, or else on the first one
  (a test that reads the SQLite file; a multi-head test that needs a server).
- ``DatabaseServer``: a private server (own folder, own port) a test may stop,
  kill and restart without disturbing the shared one.

The shared servers come from ``scripts/dev-db start <kind>``: its URL is taken
from ``PORTAL_TEST_MYSQL_URL`` / ``PORTAL_TEST_POSTGRES_URL`` when set (as
``scripts/test`` does), otherwise the script is run once per session.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from urllib.parse import urlparse, urlunparse

import pytest

from .waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV_DB = os.path.join(REPO, "scripts", "dev-db")
BACKENDS = ("sqlite", "mariadb", "postgres")
URL_VARIABLES = {"mariadb": "PORTAL_TEST_MYSQL_URL", "postgres": "PORTAL_TEST_POSTGRES_URL"}
DEFAULT_BACKENDS = "sqlite,mariadb"


def _run_dev_db(action, kind, env=None):
    answer = subprocess.run([DEV_DB, action, kind], capture_output=True, text=True, timeout=900,
                            env={**os.environ, **(env or {})})
    if answer.returncode != 0:
        raise RuntimeError(f"scripts/dev-db {action} {kind} failed:\n{answer.stderr[-3000:]}")
    return answer.stdout


def _url_from_output(output):
    for line in output.splitlines():
        if "=" in line:
            return line.split("=", 1)[1].strip().strip("'\"")
    raise RuntimeError(f"scripts/dev-db printed no URL: {output!r}")


_shared_urls = {}


def server_url(kind):
    """URL of the session's shared server of ``kind`` (its ``hpcportal`` database)."""
    if kind not in _shared_urls:
        url = os.environ.get(URL_VARIABLES[kind])
        _shared_urls[kind] = url or _url_from_output(_run_dev_db("start", kind))
    return _shared_urls[kind]


def with_database(url, name):
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path="/" + name))


def _admin_connection(url):
    parsed = urlparse(url)
    if parsed.scheme.startswith(("mysql", "mariadb")):
        import pymysql
        return pymysql.connect(host=parsed.hostname, port=parsed.port or 3306, user=parsed.username,
                               password=parsed.password or "", database=parsed.path.lstrip("/"),
                               autocommit=True, connect_timeout=10)
    import psycopg2
    conn = psycopg2.connect(host=parsed.hostname, port=parsed.port or 5432, user=parsed.username,
                            password=parsed.password or "", dbname=parsed.path.lstrip("/"),
                            connect_timeout=10)
    conn.autocommit = True
    return conn


def _is_mysql(url):
    return urlparse(url).scheme.startswith(("mysql", "mariadb"))


def create_database(server, name=None):
    """A new empty database on the server of URL ``server``; returns its URL."""
    name = name or f"hpcportal_{uuid.uuid4().hex[:12]}"
    query(server, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
          if _is_mysql(server) else f'CREATE DATABASE "{name}"')
    return with_database(server, name)


def drop_database(url):
    name = urlparse(url).path.lstrip("/")
    query(with_database(url, "hpcportal"), f"DROP DATABASE IF EXISTS `{name}`"
          if _is_mysql(url) else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url, sql, params=()):
    """Rows of one statement, on a connection of its own (for assertions)."""
    conn = _admin_connection(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        conn.close()


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class DatabaseServer:
    """A private server for one test: its own folder and port, stopped at the end."""

    def __init__(self, kind="mariadb"):
        from support.daemon import free_port
        self.kind = kind
        self.base = tempfile.mkdtemp(prefix=f"db-{kind}-", dir="/tmp")
        os.chmod(self.base, 0o755)
        self.port = free_port()
        port_variable = "DEV_DB_MARIADB_PORT" if kind == "mariadb" else "DEV_DB_POSTGRES_PORT"
        self.env = {"DEV_DB_DIR": self.base, port_variable: str(self.port)}
        self.url = None

    def start(self):
        self.url = _url_from_output(_run_dev_db("start", self.kind, self.env))
        return self.url

    def stop(self):
        _run_dev_db("stop", self.kind, self.env)

    def kill(self):
        """SIGKILL of the server process, like a crash. PostgreSQL's backends
        notice that their postmaster is gone and exit; the next start waits
        for them and recovers from the WAL."""
        if self.kind == "mariadb":
            pid_file = os.path.join(self.base, "mariadb", "mysqld.pid")
        else:
            pid_file = os.path.join(self.base, "postgres", "data", "postmaster.pid")
        with open(pid_file) as handle:
            pid = int(handle.readline().strip())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _running(pid), timeout=30, interval=0.05, message=f"{self.kind} ({pid}) to end")

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# -- pytest plugin


def pytest_addoption(parser):
    parser.addoption(
        "--db-backends", default=os.environ.get("PORTAL_TEST_DB_BACKENDS", DEFAULT_BACKENDS),
        help="comma-separated database backends the API tests run on: sqlite, mariadb, postgres "
             f"(default {DEFAULT_BACKENDS}, or $PORTAL_TEST_DB_BACKENDS)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "databases(*backends, always=False): run this test on exactly these database "
                   "backends (of those --db-backends chooses; with always=True, on all of them)")
    chosen = [b.strip() for b in config.getoption("--db-backends").split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown:
        raise pytest.UsageError(f"--db-backends: unknown backend(s) {unknown}; use {BACKENDS}")


def pytest_generate_tests(metafunc):
    if "db_url" not in metafunc.fixturenames:
        return
    option = metafunc.config.getoption("--db-backends")
    backends = [b.strip() for b in option.split(",") if b.strip()]
    marker = metafunc.definition.get_closest_marker("databases")
    if marker and marker.kwargs.get("always"):
        # A promise made for every backend (atomic limits, say) is checked on every one.
        backends = list(marker.args)
    elif marker:
        # The backends the test supports: those chosen, or else its first one
        # (a SQLite-only test still runs when only servers are chosen).
        backends = [b for b in backends if b in marker.args] or [marker.args[0]]
    metafunc.parametrize("db_url", backends, indirect=True, ids=backends)


@pytest.fixture
def db_url(request):
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield None
        return
    url = create_database(server_url(kind))
    yield url
    drop_database(url)
