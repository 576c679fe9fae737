"""Reserving room for a new upload: the user's quota, their number of
unfinished uploads and the free-space reserve are checked and the upload's row
is inserted as one step, under one database-wide lock.

Checked one by one, sixteen parallel starts each see the same totals and all
pass; under the lock each start sees the rows of those before it. The lock is
the database's (``database_lock``: SQLite's write lock, a PostgreSQL advisory
lock, a MariaDB named lock), so it holds across heads sharing one database.

Free space is counted with what unfinished uploads still have to write:
partial files grow as bytes arrive, so the filesystem alone does not show
what has been promised already.
"""

import peewee

from ..errors import InsufficientStorage, QuotaExceeded, RateLimited, ServiceUnavailable
from ..models.base import database_lock
from ..models.uploads import Upload, UploadChunk, UploadedFile


def _total(query):
    return int(query.scalar() or 0)


class Reservations:
    """``reserve(user, size, insert)`` runs ``insert()`` (which creates the
    upload row) only when the upload fits, all under the lock."""

    def __init__(self, settings, database, free_bytes, lock_timeout=10):
        """``free_bytes()`` tells the uploads filesystem's free bytes now."""
        self._settings = settings
        self._database = database
        self._free_bytes = free_bytes
        self._lock_timeout = max(1, int(lock_timeout))

    def used_bytes(self, user_name):
        """Bytes a user holds: finished files plus the full size of every
        unfinished upload."""
        stored = _total(UploadedFile.select(peewee.fn.COALESCE(peewee.fn.SUM(UploadedFile.size), 0))
                        .where(UploadedFile.user == user_name))
        reserved = _total(Upload.select(peewee.fn.COALESCE(peewee.fn.SUM(Upload.size), 0))
                          .where(Upload.user == user_name))
        return stored + reserved

    def outstanding_bytes(self):
        """Bytes every unfinished upload (of any user) may still write."""
        promised = _total(Upload.select(
            peewee.fn.COALESCE(peewee.fn.SUM(Upload.size - Upload.tus_offset), 0)))
        received = _total(UploadChunk.select(peewee.fn.COALESCE(peewee.fn.SUM(UploadChunk.size), 0)))
        return max(0, promised - received)

    def reserve(self, user, size, insert):
        busy = ServiceUnavailable("The database is busy; try starting the upload again.",
                                  code="database_busy", headers={"Retry-After": "5"})
        with database_lock(self._database, "upload reservations", self._lock_timeout, busy):
            self._check(user, size)
            return insert()

    def _check(self, user, size):
        s = self._settings
        if s.user_quota is not None:
            used = self.used_bytes(user.name)
            if used + size > s.user_quota:
                raise QuotaExceeded(
                    f"This upload would take your stored data to {used + size} bytes, over your "
                    f"quota of {s.user_quota} bytes. Delete files you no longer need.",
                    extra={"quota": s.user_quota, "used": used})
        active = Upload.select().where(Upload.user == user.name).count()
        if active >= s.max_active_per_user:
            raise RateLimited(
                f"You already have {active} unfinished uploads (the limit is "
                f"{s.max_active_per_user}); finish or cancel one first.",
                code="too_many_uploads", retry_after=60)
        available = self._free_bytes() - s.free_space_reserve - self.outstanding_bytes()
        if size > available:
            raise InsufficientStorage(
                "There is not enough free space for this file on the uploads filesystem "
                f"({max(available, 0)} bytes available).", headers={"Retry-After": "300"})
