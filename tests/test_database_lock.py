"""``database_lock``: one holder at a time across connections (and so across heads), on
every backend; each lock name its own lock where the database has more than one; a
server waits as long as the caller asks, not the session's bounds, then raises the
caller's error."""

import concurrent.futures
import contextlib
import os
import threading
import time

import peewee
import pytest
from playhouse.db_url import connect

from hpcportal.dbserver import open_server_database
from hpcportal.models.base import DATABASE_LOCKS, BaseModel, database_lock

WAIT = 30  # generous bound for the other thread; no test expects anything sooner


class Entry(BaseModel):
    name = peewee.CharField()


@pytest.fixture
def sqlite(tmp_path):
    database = peewee.SqliteDatabase(os.path.join(tmp_path, "entries.db"), pragmas={"journal_mode": "wal"})
    with database.bind_ctx([Entry]):
        database.create_tables([Entry])
        yield database
    database.close()


@pytest.fixture
def server(db_url):
    database = connect(db_url)
    with database.bind_ctx([Entry]):
        database.create_tables([Entry])
        yield database
    database.close()


@contextlib.contextmanager
def _portal_database(url, busy_timeout):
    """The daemon's own pooled database, its sessions bounded by ``busy_timeout``."""
    database = open_server_database(url, max_connections=4, stale_timeout=None, pool_timeout=WAIT,
                                    connect_timeout=5, lock_wait_timeout=busy_timeout)
    try:
        with database.bind_ctx([Entry]):
            database.create_tables([Entry])
            yield database
    finally:
        database.close()  # the test's own thread's connection
        database.close_all()


def _hold_then_ask(database, first_lock, second_lock, release):
    """What two threads (two connections) see: the first takes ``first_lock``, writes an
    entry and keeps the lock until ``release(second)`` returns; meanwhile the second
    (``second``, its future) takes ``second_lock`` and counts the entries."""
    events = []
    held, go = threading.Event(), threading.Event()

    def first():
        try:
            with database_lock(database, first_lock):
                Entry.create(name="first")
                held.set()
                assert go.wait(timeout=WAIT)
                events.append("first leaves")
        finally:
            database.close()

    def second():
        assert held.wait(timeout=WAIT)
        try:
            with database_lock(database, second_lock):
                events.append(f"second enters, entries: {Entry.select().count()}")
        finally:
            database.close()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        holder = pool.submit(first)
        asker = pool.submit(second)
        try:
            assert held.wait(timeout=WAIT)
            release(asker)
        finally:
            go.set()
        holder.result(timeout=WAIT)
        asker.result(timeout=WAIT)
    return events


def _after_a_moment(asker):
    time.sleep(0.5)  # time for the second to get in, were the lock not held


def _once_it_is_done(asker):
    concurrent.futures.wait([asker], timeout=WAIT)


@pytest.mark.unit
def test_sqlite_second_holder_waits_until_the_first_has_committed(sqlite):
    events = _hold_then_ask(sqlite, "upload reservations", "upload reservations", _after_a_moment)
    assert events == ["first leaves", "second enters, entries: 1"]


@pytest.mark.unit
def test_each_lock_has_its_own_keys_and_the_older_ones_keep_theirs():
    keys = list(DATABASE_LOCKS.values())
    assert len({key.advisory_key for key in keys}) == len(keys)
    assert len({key.named_lock for key in keys}) == len(keys)
    # What heads of earlier versions take: during an upgrade both versions run side by side.
    assert {name: key.advisory_key for name, key in DATABASE_LOCKS.items()} == {
        "schema migration": 72657011, "upload reservations": 72657012, "file sharing": 72657019}


@pytest.mark.unit
def test_an_unknown_lock_name_is_refused(sqlite):
    with pytest.raises(KeyError):
        with database_lock(sqlite, "no such lock"):
            pass


@pytest.mark.databases("mariadb", "postgres", always=True)
def test_server_second_holder_waits_until_the_first_has_committed(server):
    events = _hold_then_ask(server, "upload reservations", "upload reservations", _after_a_moment)
    assert events == ["first leaves", "second enters, entries: 1"]


@pytest.mark.databases("mariadb", "postgres", always=True)
def test_server_locks_of_other_names_do_not_wait_for_each_other(server):
    events = _hold_then_ask(server, "upload reservations", "file sharing", _once_it_is_done)
    assert events == ["second enters, entries: 0", "first leaves"]


class Busy(Exception):
    pass


@pytest.mark.databases("mariadb", "postgres", always=True)
def test_server_gives_up_after_the_timeout_with_the_callers_error(db_url):
    def ask():
        assert held.wait(timeout=WAIT)
        started = time.monotonic()
        try:
            with pytest.raises(Busy):
                with database_lock(database, "file sharing", timeout=1, busy=Busy()):
                    pass
            return time.monotonic() - started
        finally:
            released.set()
            database.close()

    held, released = threading.Event(), threading.Event()
    # The session would wait far longer: the caller's timeout is what ends the wait.
    with _portal_database(db_url, busy_timeout=WAIT) as database:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asker = pool.submit(ask)
            with database_lock(database, "file sharing"):
                held.set()
                assert released.wait(timeout=WAIT)
            waited = asker.result(timeout=WAIT)
        assert 0.9 < waited < WAIT
        # Given up, it holds nothing: the lock is free again.
        with database_lock(database, "file sharing", timeout=1):
            pass


@pytest.mark.databases("postgres", always=True)
@pytest.mark.parametrize("session_bound", ["busy_timeout", "statement_timeout"])
def test_postgres_waits_for_the_callers_timeout_past_the_sessions_bounds(db_url, session_bound):
    # A session that gives up any wait after 1 s: its lock_timeout (database.busy_timeout)
    # or a statement_timeout the URL sets. The lock still waits as long as its caller asks
    # (the schema migration's, 5 minutes).
    if session_bound == "busy_timeout":
        url, busy_timeout, bound = db_url, 1, "lock_timeout"
    else:
        url = f"{db_url}?options=-c%20statement_timeout%3D1000"
        busy_timeout, bound = WAIT, "statement_timeout"

    def three_seconds(asker):
        time.sleep(3)

    with _portal_database(url, busy_timeout) as database:
        # The default timeout (10 s) outlasts the first holder's 3 s.
        events = _hold_then_ask(database, "upload reservations", "upload reservations", three_seconds)
        assert events == ["first leaves", "second enters, entries: 1"]
        # The block's own statements still give up after the session's 1 s.
        with database_lock(database, "upload reservations", timeout=WAIT):
            setting, = database.execute_sql(f"SELECT current_setting('{bound}')").fetchone()
            assert setting == "1s"
