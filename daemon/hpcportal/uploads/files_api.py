"""The finished files: listing, reading, previewing, sharing and deleting a
user's files, the look-ups the jobs area makes, and removal after retention_days.

A file shared with the caller (``sharing``) may be read (found, listed with
``shared``, downloaded, previewed, used in jobs) but only its owner changes,
shares or deletes it."""

import logging
import os

from ..errors import NotFound, PermissionDenied
from ..models.base import isoformat, path_hash, utc_at
from ..models.uploads import UploadedFile
from . import previews
from .browse import browse
from .links import JobLinks

log = logging.getLogger(__name__)


def serialize_file(row):
    return {
        "file_id": row.id,
        "filename": row.filename,
        "owner": row.user,
        "size": row.size,
        "sha256": row.sha256,
        "file_type": row.file_type,
        "mime_type": row.mime_type,
        "storage_path": row.storage_path,
        "job_id": row.job_id,
        "slurm_job_id": row.slurm_job_id,
        "created_at": isoformat(row.created_at),
    }


class Files(JobLinks):
    def __init__(self, settings, storage, metrics, clock, sharing):
        self._settings = settings
        self._storage = storage
        self._metrics = metrics
        self._clock = clock
        self._sharing = sharing

    def _file(self, user, file_id):
        """The caller's own file; 403 when it is only shared with them, else 404."""
        row = UploadedFile.get_or_none((UploadedFile.id == file_id) & (UploadedFile.user == user.name))
        if row is None:
            shared = self._shared_row(user, file_id)
            if shared is not None:
                raise PermissionDenied(f"{shared[0].filename} is shared with you by {shared[0].user}; only "
                                       "its owner may change, share or delete it.", code="not_owner")
            raise NotFound(f"There is no file {file_id!r}.", code="file_not_found")
        return row

    def _readable(self, user, file_id):
        """(row, owner's uid) of a file the caller owns or that is shared with them; else 404."""
        row = UploadedFile.get_or_none((UploadedFile.id == file_id) & (UploadedFile.user == user.name))
        if row is not None:
            return row, user.uid
        shared = self._shared_row(user, file_id)
        if shared is None:
            raise NotFound(f"There is no file {file_id!r}.", code="file_not_found")
        return shared

    def _shared_row(self, user, file_id):
        if not isinstance(file_id, str):
            return None
        grant = self._sharing.grant_for(user, file_id)
        if grant is None:
            return None
        row = UploadedFile.get_or_none((UploadedFile.id == file_id) & (UploadedFile.user != user.name))
        return (row, grant.owner_uid) if row is not None else None

    def completed(self, user_name, upload_id):
        """The file an upload became, or None."""
        return UploadedFile.get_or_none((UploadedFile.upload_id == upload_id)
                                        & (UploadedFile.user == user_name))

    def list_files(self, user, job_id=None, file_type=None, limit=100, offset=0, q=None,
                   sort="-time", shared=False):
        """(files, total) of the caller's files, or with ``shared`` of those others shared
        with the caller; ``q`` is a name substring, ``sort`` one of ``SORTS`` (see browse)."""
        query = UploadedFile.select()
        query = query.where(self._sharing.shared_with(user) if shared else UploadedFile.user == user.name)
        rows, total = browse(query, job_id=job_id, file_type=file_type, q=q, sort=sort,
                             limit=limit, offset=offset)
        return [serialize_file(row) for row in rows], total

    def get_file(self, user, file_id):
        return serialize_file(self._readable(user, file_id)[0])

    def open_file(self, user, file_id):
        """(file dict, read-only descriptor); the caller closes the descriptor."""
        row, owner_uid = self._readable(user, file_id)
        return serialize_file(row), self._storage.open_file(row.storage_path, owner_uid=owner_uid)

    def preview(self, user, file_id, tail=False):
        """Text (the first or, with ``tail``, the last 64 KiB), a table, JSON or an image's
        size: see ``previews``; 415 for anything else."""
        info, fd = self.open_file(user, file_id)
        try:
            return previews.preview(info, fd, tail=tail)
        finally:
            os.close(fd)

    def thumbnail(self, user, file_id):
        """(file dict, PNG bytes of at most 256 px) of an image file; 415 for others."""
        info, fd = self.open_file(user, file_id)
        try:
            return info, previews.thumbnail(info, fd)
        finally:
            os.close(fd)

    def delete_file(self, user, file_id):
        self._remove(self._file(user, file_id), owner=user)

    def _remove(self, row, condition=None, owner=None):
        query = UploadedFile.delete().where(UploadedFile.id == row.id)
        if condition is not None:
            query = query.where(condition)
        if query.execute():
            self._storage.remove_file(row.storage_path)
            self._sharing.forget(row, owner)
            return True
        return False

    # -- sharing (see ``sharing``) --------------------------------------------

    def share(self, user, file_id, body):
        """(share, created) of the caller's file shared with ``body``'s user or group."""
        return self._sharing.share(user, self._file(user, file_id), body)

    def shares(self, user, file_id):
        return self._sharing.shares(self._file(user, file_id))

    def unshare(self, user, file_id, share_id):
        self._sharing.unshare(user, self._file(user, file_id), share_id)

    # -- for other areas (jobs) ----------------------------------------------

    def file_for_user(self, user_name, file_id):
        row = UploadedFile.get_or_none((UploadedFile.id == file_id) & (UploadedFile.user == user_name))
        return serialize_file(row) if row else None

    def shared_file(self, user, file_id=None, storage_path=None):
        """Another user's file shared with ``user`` (a ``User``), by id or by its
        exact storage path; None when there is none."""
        if storage_path is not None:
            if not isinstance(storage_path, str) or not storage_path:
                return None
            row = UploadedFile.get_or_none(
                UploadedFile.storage_path_hash == path_hash(os.path.normpath(storage_path)))
            file_id = row.id if row is not None else None
        shared = self._shared_row(user, file_id)
        return serialize_file(shared[0]) if shared else None

    def file_by_storage_path(self, user_name, storage_path):
        if not isinstance(storage_path, str) or not storage_path:
            return None
        row = UploadedFile.get_or_none(
            (UploadedFile.storage_path_hash == path_hash(os.path.normpath(storage_path)))
            & (UploadedFile.user == user_name))
        return serialize_file(row) if row else None

    def files_for_job(self, user_name, job_id):
        rows = (UploadedFile.select().where((UploadedFile.user == user_name)
                                            & (UploadedFile.job_id == job_id))
                .order_by(UploadedFile.created_at, UploadedFile.id))
        return [serialize_file(r) for r in rows]

    # -- clean-up (the janitor service) --------------------------------------

    def apply_retention(self):
        days = self._settings.retention_days
        if days is None:
            return 0
        cutoff = utc_at(self._clock() - days * 86400)
        count = 0
        for row in list(UploadedFile.select().where(UploadedFile.created_at < cutoff)):
            if self._remove(row, condition=UploadedFile.created_at < cutoff):
                count += 1
                self._metrics.retained_removed.inc()
                log.info("file %s of %s removed after %s days: %s", row.id, row.user, days,
                         row.storage_path)
        return count
