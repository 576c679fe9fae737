"""``rebuildable_transaction``: rows the portal can rebuild commit without waiting for the disk."""

import os

import peewee
import pytest

from hpcportal.models.base import BaseModel, rebuildable_transaction


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
