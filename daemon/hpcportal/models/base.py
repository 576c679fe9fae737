"""What every model shares: the base class, JSON columns, UTC timestamps, path keys."""

import contextlib
import datetime
import hashlib
import json

import peewee


def utcnow():
    """Naive UTC: portable across SQLite, MariaDB and PostgreSQL columns."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)


def utc_at(timestamp):
    """A Unix time as naive UTC, to the second, like ``utcnow``."""
    return datetime.datetime.fromtimestamp(int(timestamp), datetime.timezone.utc).replace(tzinfo=None)


def path_hash(path):
    """The key of a row found by its path (sha256): one unique key on every
    backend, however long the path. File names that are not UTF-8 keep their bytes."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


def isoformat(value):
    """ISO 8601 with a Z, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.replace(tzinfo=None).isoformat() + "Z"


@contextlib.contextmanager
def rebuildable_transaction(database):
    """A transaction for rows the portal can rebuild from elsewhere (a job row, from
    Slurm's copy of the job and its comment): its commit does not wait for the disk.

    A crash of the daemon keeps it; a power cut in the next seconds may lose it, and
    then it is rebuilt. SQLite's WAL commits without an fsync (``synchronous=NORMAL``),
    PostgreSQL without waiting for its log (``synchronous_commit``); MariaDB as usual.
    Inside another transaction it is just that transaction's savepoint."""
    if database.in_transaction():
        with database.atomic():
            yield
        return
    if isinstance(database, peewee.SqliteDatabase):
        database.execute_sql("PRAGMA synchronous=NORMAL")
        try:
            with database.atomic():
                yield
        finally:
            database.execute_sql("PRAGMA synchronous=FULL")
    elif isinstance(database, peewee.PostgresqlDatabase):
        with database.atomic():
            database.execute_sql("SET LOCAL synchronous_commit TO OFF")
            yield
    else:
        with database.atomic():
            yield


class JSONField(peewee.TextField):
    """JSON stored as text, so every backend stores it the same way."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    """Declared without a database; ``hpcportal.models.bind`` binds at start-up."""

    class Meta:
        legacy_table_names = False
