"""``rebuildable_transaction``: rows the portal can rebuild commit without waiting for the disk;
``insert_row``: the insert on a submission's path."""

import datetime
import os

import peewee
import pytest

from hpcportal.models.base import BaseModel, JSONField, insert_row, rebuildable_transaction, utcnow


class Row(BaseModel):
    name = peewee.CharField()


@pytest.fixture
def sqlite(tmp_path):
    database = peewee.SqliteDatabase(os.path.join(tmp_path, "rows.db"),
                                     pragmas={"journal_mode": "wal", "synchronous": "full"})
    with database.bind_ctx([Row]):
        database.create_tables([Row])
        yield database
    database.close()


def synchronous(database):
    return database.execute_sql("PRAGMA synchronous").fetchone()[0]


@pytest.mark.unit
def test_sqlite_commits_without_fsync_then_restores_full(sqlite):
    FULL, NORMAL = 2, 1
    assert synchronous(sqlite) == FULL
    with rebuildable_transaction(sqlite):
        Row.create(name="job 1")
        during = synchronous(sqlite)
    assert during == NORMAL
    assert synchronous(sqlite) == FULL
    assert [r.name for r in Row.select()] == ["job 1"]


@pytest.mark.unit
def test_full_is_restored_when_the_transaction_fails(sqlite):
    with pytest.raises(RuntimeError):
        with rebuildable_transaction(sqlite):
            Row.create(name="rolled back")
            raise RuntimeError("boom")
    assert synchronous(sqlite) == 2
    assert Row.select().count() == 0


@pytest.mark.unit
def test_inside_a_transaction_it_is_a_savepoint_of_it(sqlite):
    # SQLite refuses to change its safety level inside a transaction: the outer one decides.
    with sqlite.atomic():
        Row.create(name="outer")
        with rebuildable_transaction(sqlite):
            Row.create(name="inner")
    assert sorted(r.name for r in Row.select()) == ["inner", "outer"]
    assert synchronous(sqlite) == 2


@pytest.mark.databases("postgres", always=True)
def test_postgres_commits_without_waiting_for_its_log(db_url):
    from playhouse.db_url import connect
    database = connect(db_url)
    try:
        with database.bind_ctx([Row]):
            database.create_tables([Row])
            with rebuildable_transaction(database):
                Row.create(name="job 1")
                during = database.execute_sql("SHOW synchronous_commit").fetchone()[0]
            assert during == "off"
            assert database.execute_sql("SHOW synchronous_commit").fetchone()[0] == "on"
            assert Row.select().count() == 1
    finally:
        database.close()


class Record(BaseModel):
    """Every kind of column a job row has: text, numbers, JSON, times, defaults."""
    key = peewee.CharField(unique=True)
    count = peewee.IntegerField(null=True)
    detail = JSONField(null=True)
    state = peewee.CharField(default="PENDING")
    at = peewee.DateTimeField(default=utcnow)
    ended = peewee.DateTimeField(null=True)


@pytest.mark.databases("sqlite", "mariadb", "postgres", always=True)
def test_insert_row_writes_what_create_writes(db_url):
    """``insert_row`` (the job row's insert, its SQL made once) stores exactly what
    ``Model.create`` stores, and a duplicate is peewee's IntegrityError, on every backend."""
    from playhouse.db_url import connect
    database = connect(db_url or "sqlite:///:memory:")
    try:
        with database.bind_ctx([Record]):
            database.create_tables([Record])
            at = datetime.datetime(2026, 12, 4, 10, 20, 30)
            given = {"count": 3, "detail": {"이름": "데이터 (1).csv", "n": [1, None]}, "ended": at}
            Record.create(key="by create", **given)
            with rebuildable_transaction(database):
                insert_row(Record, {"key": "by insert_row", **given})
            rows = {r.key: r for r in Record.select()}
            made, inserted = rows["by create"], rows["by insert_row"]
            assert [getattr(inserted, f) for f in ("count", "detail", "state", "ended")] == \
                   [getattr(made, f) for f in ("count", "detail", "state", "ended")] == \
                   [3, given["detail"], "PENDING", at]
            assert abs((inserted.at - made.at).total_seconds()) <= 2
            with pytest.raises(peewee.IntegrityError):
                with database.atomic():
                    insert_row(Record, {"key": "by create"})
    finally:
        database.close()
