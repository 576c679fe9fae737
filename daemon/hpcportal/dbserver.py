"""Server databases (MariaDB/MySQL, PostgreSQL): the store several heads share.

``open_server_database(url, settings)`` maps ``mysql://``, ``mariadb://``,
``postgresql://`` (and playhouse's ``+pool`` spellings) to a pooled peewee
database that survives a restart of the database server:

- a connection is checked before it leaves the pool (playhouse pings it), so
  connections the server dropped while idle are replaced silently;
- when a connection dies in use, it is discarded at once (never returned to
  the pool) and the error surfaces as ``peewee.OperationalError``, which the
  app answers with 503. A read outside a transaction, or a BEGIN, is retried
  once on a fresh connection; a write is not, because the server may have
  committed it before the connection broke, and retrying could apply it twice.
  A transaction whose connection died is over: the rest of its block fails
  instead of running on a new connection outside the transaction;
- background threads keep one connection each (peewee's model); their next
  statement after an outage reconnects, so a loop that survives one failed
  round keeps working without a restart of the daemon;
- connections of threads that ended without closing them are reclaimed when
  the pool runs out, and an exhausted pool is a 503, not a 500.

Each new connection gets the same session: UTC, READ COMMITTED (MariaDB's
default REPEATABLE READ takes gap locks that make concurrent upserts from
several heads deadlock), a lock wait bound of ``database.busy_timeout``, and
on MariaDB strict SQL mode and utf8mb4.
"""

import logging
import threading
from urllib.parse import urlparse

import peewee
from playhouse.db_url import parse as parse_url
from playhouse.pool import MaxConnectionsExceeded, _PooledMySQLDatabase, _PooledPostgresqlDatabase

log = logging.getLogger(__name__)

MYSQL_SCHEMES = {"mysql", "mysql+pool", "mariadb", "mariadb+pool"}
POSTGRES_SCHEMES = {"postgres", "postgresql", "postgres+pool", "postgresql+pool"}
SERVER_SCHEMES = MYSQL_SCHEMES | POSTGRES_SCHEMES

# MariaDB/MySQL client and server errors that mean "this connection is gone".
MYSQL_CONNECTION_LOST = {
    1053,  # server shutdown in progress
    1927,  # connection was killed
    2003,  # can't connect
    2006,  # server has gone away
    2013,  # lost connection during query
    2014,  # commands out of sync (a half-read reply after a failure)
    4031,  # disconnected by the server because of inactivity
}
READ_STATEMENTS = ("SELECT", "SHOW", "WITH")


class _Resilient:
    """Discards dead connections and reconnects; mixed into a pooled database."""

    def __init__(self, *args, lock_wait_timeout=10, **kwargs):
        self._lock_wait_timeout = max(1, int(lock_wait_timeout))
        self._owners = {}
        super().__init__(*args, **kwargs)

    # -- pool: whose connection is it, and reclaiming those of ended threads

    def _connect(self):
        with self._pool_lock:
            try:
                conn = super()._connect()
            except MaxConnectionsExceeded:
                if not self._reclaim_orphans():
                    raise
                conn = super()._connect()
            self._owners[self.conn_key(conn)] = threading.current_thread()
            return conn

    def _reclaim_orphans(self):
        """Close connections checked out by threads that no longer exist."""
        reclaimed = 0
        for key, pooled in list(self._in_use.items()):
            owner = self._owners.get(key)
            if owner is not None and not owner.is_alive():
                self._in_use.pop(key, None)
                self._owners.pop(key, None)
                self._close_raw(pooled.connection)
                reclaimed += 1
        if reclaimed:
            log.warning("reclaimed %d database connection(s) of ended threads", reclaimed)
        return reclaimed

    def connect(self, reuse_if_open=False):
        try:
            return super().connect(reuse_if_open)
        except MaxConnectionsExceeded:
            raise peewee.OperationalError(
                f"all {self._max_connections} database connections are busy "
                "(database.max_connections)") from None

    # -- statements

    def execute_sql(self, sql, params=None):
        retry = not self.in_transaction() and sql.lstrip().upper().startswith(READ_STATEMENTS)
        return self._guarded(super().execute_sql, sql, params, retry=retry)

    def begin(self, *args, **kwargs):
        return self._guarded(super().begin, *args, retry=True, **kwargs)

    def commit(self):
        if self._broken():
            raise peewee.OperationalError(
                "the database connection was lost; the transaction was rolled back")
        return self._guarded(super().commit, retry=False)

    def rollback(self):
        if self._broken() or self.is_closed():
            # The server rolled the transaction back when the connection died.
            self._clear_broken()
            return None
        try:
            return self._guarded(super().rollback, retry=False)
        finally:
            self._clear_broken()

    def cursor(self, *args, **kwargs):
        if self._broken():
            raise peewee.InterfaceError(
                "the database connection was lost during this transaction")
        return super().cursor(*args, **kwargs)

    def _guarded(self, operation, *args, retry=False, **kwargs):
        try:
            return operation(*args, **kwargs)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            if self.is_closed() or not self._connection_lost(self._state.conn, exc):
                raise
            in_transaction = self.in_transaction()
            self._discard_connection(in_transaction)
            if in_transaction or not retry:
                log.warning("database connection lost: %s", exc)
                raise
            log.warning("database connection lost (%s); retrying on a new connection", exc)
        return operation(*args, **kwargs)

    def _discard_connection(self, in_transaction):
        conn = self._state.conn
        key = self.conn_key(conn)
        with self._pool_lock:
            self._in_use.pop(key, None)
            self._owners.pop(key, None)
            self._pool_available.notify()
        self._close_raw(conn)
        # Keep the transaction stack: the enclosing atomic() blocks unwind it.
        self._state.conn = None
        self._state.closed = True
        if in_transaction:
            self._state.broken = True

    def _broken(self):
        return getattr(self._state, "broken", False) and self.in_transaction()

    def _clear_broken(self):
        if not self.in_transaction():
            self._state.broken = False

    def _close(self, conn, close_conn=False):
        self._owners.pop(self.conn_key(conn), None)
        return super()._close(conn, close_conn)

    def close(self):
        self._state.broken = False
        return super().close()


class _MySQLSession(peewee.MySQLDatabase):
    """Sets up each new raw connection once (the pool sits above this class)."""

    def _connect(self):
        conn = super()._connect()
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cursor.execute(
                "SET SESSION time_zone = '+00:00', innodb_lock_wait_timeout = %s, "
                "sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
                (self._lock_wait_timeout,))
        return conn


class _PostgresSession(peewee.PostgresqlDatabase):
    def _connect(self):
        conn = super()._connect()
        with conn.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
            cursor.execute(f"SET lock_timeout = {int(self._lock_wait_timeout * 1000)}")
        return conn


class PortalMySQLDatabase(_Resilient, _PooledMySQLDatabase, _MySQLSession):
    # TEXT holds 64 KiB on MariaDB; JSON documents and job scripts may be larger.
    field_types = {**peewee.MySQLDatabase.field_types, "TEXT": "LONGTEXT"}

    def _connection_lost(self, conn, exc):
        errno = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        if errno in MYSQL_CONNECTION_LOST or not getattr(conn, "open", True):
            return True
        if isinstance(exc, peewee.InterfaceError):
            return True  # pymysql: a closed or half-closed connection
        try:
            conn.ping(False)
        except Exception:
            return True
        return False


class PortalPostgresqlDatabase(_Resilient, _PooledPostgresqlDatabase, _PostgresSession):
    def _connection_lost(self, conn, exc):
        if getattr(conn, "closed", 0):
            return True
        try:
            return self._adapter.txn_status(conn) == self._adapter.txn_unknown
        except Exception:
            return True


def open_server_database(url, *, max_connections, stale_timeout, pool_timeout,
                         connect_timeout, lock_wait_timeout):
    scheme = urlparse(url).scheme
    params = parse_url(url, unquote_password=True, unquote_user=True)
    if not params.get("database"):
        raise ValueError(f"{scheme} URL needs a database name, e.g. {scheme}://user:pw@host/hpcportal")
    if "passwd" in params:
        params["password"] = params.pop("passwd")
    pool = {"max_connections": max_connections, "stale_timeout": stale_timeout or None,
            "timeout": pool_timeout}
    # Query-string parameters of the URL win over the settings (e.g. ?max_connections=50).
    pool.update({k: params.pop(k) for k in list(pool) if k in params})
    if scheme in MYSQL_SCHEMES:
        params.setdefault("charset", "utf8mb4")
        params.setdefault("connect_timeout", connect_timeout)
        cls = PortalMySQLDatabase
    elif scheme in POSTGRES_SCHEMES:
        params.setdefault("connect_timeout", max(1, int(connect_timeout)))
        cls = PortalPostgresqlDatabase
    else:
        raise ValueError(f"unsupported database scheme {scheme!r}")
    database = params.pop("database")
    return cls(database, lock_wait_timeout=lock_wait_timeout, **pool, **params)

