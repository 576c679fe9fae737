"""Opening the database and migrating its schema forward.

Migrations are numbered; ``schema_migrations`` records each applied number, so
an upgrade applies exactly the ones a database lacks. They run under a
database-wide lock, so several daemons starting at once on one database migrate
it once; the others wait and then find nothing to do.
"""

import contextlib
import logging
import os
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect

from . import models
from .errors import ConfigError
from .models.base import utcnow

log = logging.getLogger(__name__)


def _create_tables(module_name):
    def migrate(database):
        module = __import__(f"hpcportal.models.{module_name}", fromlist=["MODELS"])
        database.create_tables(module.MODELS, safe=True)
    migrate.__doc__ = f"create the {module_name} tables"
    return migrate


# (number, description, function(database)). Append only; never renumber.
MIGRATIONS = [
    (1, "audit records", _create_tables("audit")),
    (2, "catalog generations and image index", _create_tables("catalog")),
    (3, "uploads, their chunks and finished files", _create_tables("uploads")),
    (5, "template index", _create_tables("templates")),
]


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
        else:
            database = connect(url)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"database.url: {exc}") from None
    models.bind(database)
    SchemaMigration.bind(database)
    return database


@contextlib.contextmanager
def _migration_lock(database):
    if isinstance(database, peewee.SqliteDatabase):
        # IMMEDIATE takes SQLite's write lock at once: other daemons block here.
        with database.atomic("IMMEDIATE"):
            yield
    elif isinstance(database, peewee.PostgresqlDatabase):
        with database.atomic():
            database.execute_sql("SELECT pg_advisory_xact_lock(72657011)")
            yield
    elif isinstance(database, peewee.MySQLDatabase):
        database.execute_sql("SELECT GET_LOCK('hpcportal_migrate', 300)")
        try:
            yield
        finally:
            database.execute_sql("SELECT RELEASE_LOCK('hpcportal_migrate')")
    else:
        yield


def pending_migrations(database):
    if not SchemaMigration.table_exists():
        return list(MIGRATIONS)
    applied = {row.version for row in SchemaMigration.select(SchemaMigration.version)}
    return [m for m in MIGRATIONS if m[0] not in applied]


def upgrade(database):
    """Apply every missing migration; returns the list of (number, description) applied."""
    done = []
    with database.connection_context():
        with _migration_lock(database):
            database.create_tables([SchemaMigration], safe=True)
            for number, description, migrate in pending_migrations(database):
                log.info("applying migration %d: %s", number, description)
                migrate(database)
                SchemaMigration.create(version=number, description=description)
                done.append((number, description))
    return done
