"""What every model shares: the base class, JSON columns, UTC timestamps."""

import datetime
import json

import peewee


def utcnow():
    """Naive UTC: portable across SQLite, MariaDB and PostgreSQL columns."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)


def isoformat(value):
    """ISO 8601 with a Z, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.replace(tzinfo=None).isoformat() + "Z"


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
