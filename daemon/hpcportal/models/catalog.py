"""Catalog tables: the columns every indexed file shares, and the image index.

``IndexedFile`` is abstract (no table of its own): each catalog kind subclasses
it (``Image`` here, templates in their own module) and so gets the columns the
indexer needs for its change/skip logic. Rows are keyed by ``path_hash`` (sha256
of the relative path) so that upserts from several daemons meet on one unique
key, whatever the database and however long the path.
"""

import peewee

from .base import BaseModel, JSONField, utcnow


class IndexedFile(BaseModel):
    path_hash = peewee.CharField(max_length=64, unique=True)
    relpath = peewee.TextField()
    path = peewee.TextField()
    size = peewee.BigIntegerField()
    mtime_ns = peewee.BigIntegerField()
    inode = peewee.BigIntegerField()
    # Fingerprint of companion files (e.g. an image's sidecar YAML), "" when none.
    companion = peewee.CharField(max_length=255, default="")
    valid = peewee.BooleanField(default=True, index=True)
    error = peewee.TextField(null=True)
    indexed_at = peewee.DateTimeField(default=utcnow)


class CatalogGeneration(BaseModel):
    """One counter per kind, bumped in the same transaction as every change:
    a daemon can tell in one cheap query whether its cached listing is current,
    even when another daemon made the change."""

    kind = peewee.CharField(max_length=64, primary_key=True)
    generation = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "catalog_generations"


class Image(IndexedFile):
    name = peewee.CharField(max_length=255)
    type = peewee.CharField(max_length=255, index=True)
    # The whole metadata read from the file and its sidecar (see catalog.images).
    document = JSONField(null=True)

    class Meta:
        table_name = "catalog_images"


MODELS = [CatalogGeneration, Image]
