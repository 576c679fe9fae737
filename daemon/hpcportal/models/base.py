"""What every model shares: the base class, JSON columns, UTC timestamps, path keys,
and the ways of writing: rebuildable transactions and database-wide locks."""

import contextlib
import datetime
import hashlib
import json
from collections import namedtuple

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


LockKeys = namedtuple("LockKeys", "advisory_key named_lock")

# Every database-wide lock, by name: its key among PostgreSQL's advisory locks and
# the prefix of its MariaDB/MySQL named lock. These are the keys and names earlier
# versions used, so heads of two versions side by side during an upgrade still
# exclude each other; a new lock takes a key and a prefix of its own, or it would
# wait for unrelated work.
DATABASE_LOCKS = {
    "schema migration": LockKeys(72657011, "hpcportal_migrate"),
    "upload reservations": LockKeys(72657012, "hpcportal_uploads"),
    "file sharing": LockKeys(72657019, "hpcportal_shares"),
}


@contextlib.contextmanager
def database_lock(database, name, timeout=10, busy=None, transaction=True):
    """Run the block holding the database-wide lock ``name`` (one of ``DATABASE_LOCKS``),
    in a transaction. The lock is the database's, so it holds across every head
    sharing the database:

    - SQLite: ``BEGIN IMMEDIATE`` takes the write lock of the file at once; others
      wait here (up to the connection's busy timeout);
    - PostgreSQL: a transaction-scoped advisory lock (``pg_advisory_xact_lock``);
    - MariaDB/MySQL: a named lock (``GET_LOCK``), taken before the transaction
      begins and released after it commits, so the next holder reads the rows this
      one wrote (the sessions use READ COMMITTED).

    On both servers the wait lasts up to ``timeout`` seconds, however long the
    session's own lock wait bound (``database.busy_timeout``), then raises ``busy``
    (by default an ``OperationalError`` naming the lock).

    ``transaction=False`` leaves out the transaction where the lock needs none
    (MariaDB/MySQL): for schema changes, which MariaDB commits one statement at a
    time anyway. SQLite's and PostgreSQL's locks are their transactions'.
    """
    keys = DATABASE_LOCKS[name]
    if isinstance(database, peewee.SqliteDatabase):
        with database.atomic("IMMEDIATE"):
            yield
    elif isinstance(database, peewee.PostgresqlDatabase):
        with database.atomic():
            _advisory_lock(database, keys.advisory_key, timeout, _timed_out(name, busy))
            yield
    elif isinstance(database, peewee.MySQLDatabase):
        # Named locks are server-wide: the database name keeps two portals (or two
        # test databases) on one server from waiting for each other.
        lock = f"{keys.named_lock}:{database.database}"[:64]
        acquired, = database.execute_sql("SELECT GET_LOCK(%s, %s)", (lock, timeout)).fetchone()
        if acquired != 1:
            raise _timed_out(name, busy)
        try:
            with _transaction(database, transaction):
                yield
        finally:
            database.execute_sql("SELECT RELEASE_LOCK(%s)", (lock,))
    else:
        with _transaction(database, transaction):
            yield


def _timed_out(name, busy):
    return busy if busy is not None else peewee.OperationalError(f"timed out waiting for the {name} lock")


LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait


def _advisory_lock(database, key, timeout, busy):
    """``pg_advisory_xact_lock`` waits as long as the session's ``lock_timeout`` allows
    (``database.busy_timeout``: 10 s, where a migration's lock asks for minutes), and
    a ``statement_timeout`` could end it sooner. For this one statement the wait is
    the caller's; the block's own statements keep the session's bounds, so that a
    migration's table locks do not queue up for minutes in front of other heads."""
    session = database.execute_sql(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')").fetchone()
    # statement_timeout off: lock_timeout alone ends the wait, with its own SQLSTATE.
    # At least 1 ms: a lock_timeout of 0 would wait for ever.
    database.execute_sql(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', '0', true)",
        (str(max(1, round(timeout * 1000))),))
    try:
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (key,))
    except peewee.OperationalError as exc:
        if _sqlstate(exc) != LOCK_NOT_AVAILABLE:
            raise
        raise busy from exc
    database.execute_sql(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        session)


def _sqlstate(exc):
    """The SQLSTATE of the driver's error that peewee wrapped (psycopg2, psycopg 3)."""
    driver_error = getattr(exc, "orig", None)
    return getattr(driver_error, "pgcode", None) or getattr(driver_error, "sqlstate", None)


def _transaction(database, wanted):
    return database.atomic() if wanted else contextlib.nullcontext()


_INSERTS = {}  # (model, database class) -> (SQL of an insert of every column, its fields in order)


def insert_row(model, values):
    """Inserts one row of ``model`` (every field but the primary key: ``values`` or the
    field's default). Same as ``model.create``, less the SQL written anew each time,
    which cost four times the insert itself on a submission's path."""
    database = model._meta.database
    # The SQL depends on the dialect alone; a database's id() may be reused by one of another kind.
    key = (model, type(database))
    prepared = _INSERTS.get(key)
    if prepared is None:
        fields = [f for f in model._meta.sorted_fields if not f.primary_key]
        sql, _ = model.insert({f: None for f in fields}).sql()
        prepared = _INSERTS[key] = (sql, fields)
    sql, fields = prepared
    params = []
    for field in fields:
        if field.name in values:
            value = values[field.name]
        else:
            value = field.default() if callable(field.default) else field.default
        params.append(field.db_value(value))
    database.execute_sql(sql, params)


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
