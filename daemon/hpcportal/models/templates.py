"""The template index: one row per template file, valid or not.

Keyed by ``path_hash`` like every indexed file (see ``models.catalog``). Several
files may share ``template_id`` (one per version); ``document`` holds the parsed
template and its problems: ``{"template": {...} | null, "errors": [...],
"warnings": [...]}``.
"""

import peewee

from .base import JSONField
from .catalog import IndexedFile


class Template(IndexedFile):
    # Full id: "<source with / as .>.<local id>", e.g. official.openfoam, users.alice.mine.
    template_id = peewee.CharField(max_length=255, null=True, index=True)
    source = peewee.CharField(max_length=255, null=True, index=True)
    version = peewee.CharField(max_length=128, null=True)
    category = peewee.CharField(max_length=64, null=True, index=True)
    name = peewee.CharField(max_length=255, null=True)
    document = JSONField(null=True)

    class Meta:
        table_name = "catalog_templates"


MODELS = [Template]
