"""Opening the database and migrating its schema forward.

Migrations are numbered; ``schema_migrations`` records each applied number, so
an upgrade applies exactly the ones a database lacks. They run under a
database-wide lock, so several daemons starting at once on one database migrate
it once; the others wait and then find nothing to do.
"""

import logging
import os
from urllib.parse import urlparse

import peewee
import playhouse.migrate
from playhouse.db_url import connect

from . import models
from .dbserver import SERVER_SCHEMES, open_server_database
from .errors import ConfigError
from .models.base import database_lock, utcnow

log = logging.getLogger(__name__)


def _create_tables(module_name, models="MODELS"):
    def migrate(database):
        module = __import__(f"hpcportal.models.{module_name}", fromlist=[models])
        database.create_tables(getattr(module, models), safe=True)
    migrate.__doc__ = f"create the {module_name} tables"
    return migrate


# (number, description, function(database)), in ascending order; never renumber. Numbers
# skipped while several changes were made at once stay unused.
MIGRATIONS = [
    (1, "audit records", _create_tables("audit")),
    (2, "catalog generations and image index", _create_tables("catalog")),
    (3, "uploads, their chunks and finished files", _create_tables("uploads")),
    (4, "jobs submitted through the portal", _create_tables("jobs")),
    (5, "template index", _create_tables("templates")),
    (6, "who holds an upload's completion lease", lambda database: _add_column(
        database, "upload", "lease_holder", peewee.CharField(max_length=255, null=True))),
    (10, "a job's dependency and array, as submitted", lambda database: (
        _add_column(database, "job", "dependency", peewee.CharField(max_length=1024, null=True)),
        _add_column(database, "job", "array", peewee.CharField(max_length=1024, null=True)))),
    (11, "job usage samples and background-service leases", _create_tables("usage")),
    (13, "notifications: events, deliveries and preferences", _create_tables("notifications")),
    (16, "users' favourite templates", _create_tables("template_sharing", "FAVOURITE_MODELS")),
    (17, "template proposals for community/", _create_tables("template_sharing", "PROPOSAL_MODELS")),
    (18, "case-folded file names for the file browser's search and sort", lambda database: _name_keys(database)),
    (19, "files shared with other users and groups", _create_tables("file_shares")),
]


def _add_column(database, table, name, field):
    # Databases created after the column joined the model already have it.
    if name in {column.name for column in database.get_columns(table)}:
        return
    schema = playhouse.migrate.SchemaMigrator.from_database(database)
    playhouse.migrate.migrate(schema.add_column(table, name, field))


def _name_keys(database):
    files = models.uploads.UploadedFile
    _add_column(database, files._meta.table_name, "name_key", peewee.TextField(null=True))
    for row in list(files.select(files.id, files.filename).where(files.name_key.is_null())):
        files.update(name_key=models.uploads.name_key(row.filename)).where(files.id == row.id).execute()


class SchemaMigration(models.base.BaseModel):
    version = peewee.IntegerField(primary_key=True)
    description = peewee.CharField(max_length=255)
    applied_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "schema_migrations"


def open_database(config):
    """A peewee Database for ``database.url`` with our pragmas, bound to the models."""
    url = config.database.url
    scheme = urlparse(url).scheme
    timeout = config.database.busy_timeout
    try:
        if scheme.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            database = connect(
                url,
                timeout=timeout,
                check_same_thread=False,
                pragmas={
                    "journal_mode": "wal",
                    "foreign_keys": 1,
                    # FULL: a commit that was acknowledged survives a power cut too.
                    "synchronous": "full",
                    "busy_timeout": int(timeout * 1000),
                },
            )
        elif scheme in SERVER_SCHEMES:
            db = config.database
            database = open_server_database(
                url, max_connections=db.max_connections, stale_timeout=db.stale_timeout,
                pool_timeout=db.pool_timeout, connect_timeout=db.connect_timeout,
                lock_wait_timeout=db.busy_timeout)
        else:
            database = connect(url)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"database.url: {exc}") from None
    models.bind(database)
    SchemaMigration.bind(database)
    return database


def pending_migrations(database):
    if not SchemaMigration.table_exists():
        return list(MIGRATIONS)
    applied = {row.version for row in SchemaMigration.select(SchemaMigration.version)}
    return [m for m in MIGRATIONS if m[0] not in applied]


def upgrade(database):
    """Apply every missing migration; returns the list of (number, description) applied."""
    done = []
    with database.connection_context():
        busy = peewee.OperationalError("timed out waiting for another daemon's schema migration")
        with database_lock(database, "schema migration", timeout=300, busy=busy, transaction=False):
            pending = pending_migrations(database)
            if pending and isinstance(database, peewee.MySQLDatabase):
                _use_binary_collation(database)
            database.create_tables([SchemaMigration], safe=True)
            for number, description, migrate in pending:
                log.info("applying migration %d: %s", number, description)
                migrate(database)
                SchemaMigration.create(version=number, description=description)
                done.append((number, description))
    return done


def _use_binary_collation(database):
    """MariaDB compares text case-insensitively by default; SQLite and PostgreSQL
    do not. Tables created from here on compare like the other backends."""
    collation, = database.execute_sql("SELECT @@collation_database").fetchone()
    if collation == "utf8mb4_bin":
        return
    try:
        database.execute_sql("ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        log.info("database collation changed from %s to utf8mb4_bin", collation)
    except peewee.DatabaseError as exc:
        log.warning("database collation is %s and cannot be changed (%s): names that differ "
                    "only in case will collide; create the database with "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", collation, exc)
