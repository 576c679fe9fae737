"""Files shared with other users or groups: one row per file and recipient.

The rows say who may read a file in place; the POSIX ACL entries on the file
and its folders are what lets them (see ``hpcportal.uploads.sharing``). Every
head reads the same rows, so a share made through one head is seen by all.
"""

import peewee

from .base import BaseModel, utcnow


class FileShare(BaseModel):
    id = peewee.CharField(max_length=32, primary_key=True)
    file_id = peewee.CharField(max_length=32, index=True)
    owner = peewee.CharField(max_length=64, index=True)
    owner_uid = peewee.IntegerField()
    kind = peewee.CharField(max_length=8)  # "user" or "group"
    principal = peewee.CharField(max_length=64)  # the user's or the group's name
    principal_id = peewee.IntegerField()  # its uid or gid
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("file_id", "kind", "principal"), True), (("kind", "principal_id"), False))


MODELS = [FileShare]
