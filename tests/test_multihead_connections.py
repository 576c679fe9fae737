"""The server databases' connection handling, in process, on a real server:
connections that die (killed by the server) are replaced, a transaction that
lost its connection never continues on another one, an exhausted pool is an
OperationalError (503), and the schema is portable (long text, binary names)."""

import threading
import uuid

import peewee
import pytest

from hpcportal import db as dbmod
from hpcportal.config import Config
from hpcportal.models.audit import AuditRecord
from support.databases import create_database, drop_database, query, server_url, with_database

pytestmark = pytest.mark.databases("mariadb", "postgres")


def _open(url, **database):
    config = Config.from_dict({"database": {"url": url, **database}})
    database = dbmod.open_database(config)
    dbmod.upgrade(database)
    return database


@pytest.fixture
def database(db_url):
    database = _open(db_url)
    yield database
    database.close_all()


def _backend_pid(database):
    if isinstance(database, peewee.MySQLDatabase):
        return database.execute_sql("SELECT CONNECTION_ID()").fetchone()[0]
    return database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


def _kill(url, pid):
    """End a connection from the server side, as a server restart does."""
    if url.startswith("mysql"):
        query(url, f"KILL CONNECTION {int(pid)}")
    else:
        query(url, "SELECT pg_terminate_backend(%s)", (pid,))


def _audit(action):
    return AuditRecord.create(action=action, outcome="ok", user="alice")


def _actions(url):
    return sorted(row[0] for row in query(url, "SELECT action FROM audit_record"))


def test_a_read_on_a_killed_connection_is_retried_on_a_new_one(database, db_url):
    old = _backend_pid(database)
    _kill(db_url, old)
    assert database.execute_sql("SELECT 1").fetchone()[0] == 1
    assert _backend_pid(database) != old


def test_a_write_on_a_killed_connection_fails_once_and_is_not_replayed(database, db_url):
    _kill(db_url, _backend_pid(database))
    with pytest.raises((peewee.OperationalError, peewee.InterfaceError)):
        _audit("lost")
    assert _actions(db_url) == []
    _audit("next")  # the thread's next statement gets a new connection
    assert _actions(db_url) == ["next"]


def test_a_transaction_whose_connection_died_does_not_continue_elsewhere(database, db_url):
    with pytest.raises((peewee.OperationalError, peewee.InterfaceError)):
        with database.atomic():
            _audit("first")
            _kill(db_url, _backend_pid(database))
            try:
                _audit("second")
            except peewee.PeeweeException:
                pass  # code that swallows the error must not write outside the transaction
            _audit("third")
    assert _actions(db_url) == []
    with database.atomic():
        _audit("after")
    assert _actions(db_url) == ["after"]


def test_an_exhausted_pool_is_an_operational_error(db_url):
    database = _open(db_url, max_connections=2, pool_timeout="0.5s")
    holding = threading.Event()
    release = threading.Event()

    def hold():
        database.connect()
        holding.set()
        release.wait(30)
        database.close()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        holding.clear()
        thread.start()
        assert holding.wait(30)
    try:
        with pytest.raises(peewee.OperationalError, match="max_connections"):
            database.execute_sql("SELECT 1")
    finally:
        release.set()
        for thread in threads:
            thread.join()
    database.close_all()


def test_connections_of_threads_that_ended_without_closing_are_reclaimed(db_url):
    database = _open(db_url, max_connections=2, pool_timeout="0.5s")
    for _ in range(5):  # each thread leaks its connection
        thread = threading.Thread(target=lambda: database.execute_sql("SELECT 1"))
        thread.start()
        thread.join()
    assert database.execute_sql("SELECT 1").fetchone()[0] == 1
    database.close_all()


def test_long_documents_and_case_sensitive_names(database, db_url):
    big = {"lines": ["x" * 1000] * 200}  # 200 KB: beyond MariaDB's TEXT
    AuditRecord.create(action="big", outcome="ok", user="Alice", detail=big)
    AuditRecord.create(action="small", outcome="ok", user="alice")
    assert AuditRecord.get(AuditRecord.action == "big").detail == big
    assert AuditRecord.select().where(AuditRecord.user == "alice").count() == 1


@pytest.mark.databases("mariadb")
def test_a_fresh_mariadb_database_is_switched_to_binary_collation():
    server = server_url("mariadb")
    name = f"hpcportal_{uuid.uuid4().hex[:12]}"
    query(server, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    url = with_database(server, name)
    try:
        database = _open(url)
        assert query(url, "SELECT @@collation_database")[0][0] == "utf8mb4_bin"
        AuditRecord.create(action="a", outcome="ok", user="Alice")
        assert AuditRecord.select().where(AuditRecord.user == "alice").count() == 0
        database.close_all()
    finally:
        drop_database(url)


def test_url_forms_and_settings(db_url):
    base = db_url.split("://", 1)[1]
    scheme = "mariadb+pool" if db_url.startswith("mysql") else "postgresql+pool"
    database = _open(f"{scheme}://{base}?max_connections=7", stale_timeout="1m")
    assert database._max_connections == 7
    assert database._stale_timeout == 60
    assert database.execute_sql("SELECT 1").fetchone()[0] == 1
    database.close_all()
