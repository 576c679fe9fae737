"""Sharing a finished file with another user or a unix group, without copying it.

The recipient reads the file in place, on the shared filesystem, in their
own jobs (which run as them): a POSIX ACL entry gives them read on the file,
and traverse-only (``x``) entries on the folders above it, up to the owner's
folder under the uploads root, let them reach it. Traverse is not read: none
of the owner's other files or folders becomes listable or readable. Entries
are written as the owner (see ``acl``) and removed on unsharing and when the
file is deleted; a folder's entry goes once no other share of that recipient
needs it.

Shares are rows (``FileShare``) every head reads; granting or revoking takes
a database-wide lock, so two heads changing the shares of one owner never
remove a folder entry the other one has just found needed.
"""

import contextlib
import grp
import logging
import os
import pwd
import time
import uuid
from collections import namedtuple

from ..errors import NotFound, PermissionDenied, ServiceUnavailable, ValidationError
from ..models.base import database_lock, isoformat, utc_at
from ..models.file_shares import FileShare
from ..models.uploads import UploadedFile
from .acl import no_acls

log = logging.getLogger(__name__)

# The identity ACL entries are written with when the owner is not the caller
# (a file removed after uploads.retention_days): what ``as_user`` needs.
Account = namedtuple("Account", "name uid gid groups")


def serialize_share(row):
    return {"id": row.id, row.kind: row.principal, "createdAt": isoformat(row.created_at)}


class Sharing:
    """``find_user(name)``: the portal's user directory (a ``User``, or PermissionDenied
    for names that are no portal user); ``acls``: an ``acl.PosixAcls``."""

    def __init__(self, database, storage, acls, find_user, clock=time.time, lock_timeout=10):
        self._database = database
        self._storage = storage
        self._acls = acls
        self._find_user = find_user
        self._clock = clock
        self._lock_timeout = max(1, int(lock_timeout))

    # -- the owner's side ----------------------------------------------------

    def share(self, owner, row, body):
        """(share dict, created): ``body`` names one ``user`` or one ``group`` (a unix
        group the owner is in). Sharing again re-applies the entries (201 vs 200)."""
        kind, name, number = self._recipient(owner, body)
        folders = self._folders(row)
        with self._locked():
            existing = FileShare.get_or_none((FileShare.file_id == row.id) & (FileShare.kind == kind)
                                             & (FileShare.principal == name))
            self._check_supported(owner, row)
            try:
                self._acls.grant(owner, kind, number, "x", folders)
                self._acls.grant(owner, kind, number, "r", [row.storage_path])
            except BaseException:
                if existing is None:
                    self._release_folders(owner, row, kind, number, folders)
                raise
            if existing is not None:
                return serialize_share(existing), False
            created = FileShare.create(id=uuid.uuid4().hex, file_id=row.id, owner=row.user,
                                       owner_uid=owner.uid, kind=kind, principal=name, principal_id=number,
                                       created_at=utc_at(self._clock()))
        log.info("file %s of %s shared with %s %s", row.id, row.user, kind, name)
        return serialize_share(created), True

    def shares(self, row):
        query = FileShare.select().where(FileShare.file_id == row.id).order_by(FileShare.created_at,
                                                                                FileShare.id)
        return [serialize_share(share) for share in query]

    def unshare(self, owner, row, share_id):
        with self._locked():
            share = FileShare.get_or_none((FileShare.id == share_id) & (FileShare.file_id == row.id))
            if share is None:
                raise NotFound(f"File {row.id!r} has no share {share_id!r}.", code="share_not_found")
            self._acls.revoke(owner, share.kind, share.principal_id, [row.storage_path])
            FileShare.delete().where(FileShare.id == share.id).execute()
            self._release_folders(owner, row, share.kind, share.principal_id, self._folders(row))
        log.info("file %s of %s no longer shared with %s %s", row.id, row.user, share.kind, share.principal)

    def forget(self, row, owner=None):
        """After ``row``'s file was deleted (its own ACL went with it): drop its shares
        and the folder entries no other share needs. Never raises: the file is gone."""
        try:
            with self._locked():
                shares = list(FileShare.select().where(FileShare.file_id == row.id))
                if not shares:
                    return
                FileShare.delete().where(FileShare.file_id == row.id).execute()
                owner = owner or _account(row.user)
                for share in shares:
                    self._release_folders(owner, row, share.kind, share.principal_id, self._folders(row))
        except Exception:  # noqa: BLE001 - left-over traverse entries expose no file
            log.exception("could not remove the folder entries of the shares of deleted file %s", row.id)

    # -- the recipient's side ------------------------------------------------

    def shared_with(self, user):
        """A condition on UploadedFile: the files others shared with ``user``."""
        granted = FileShare.select(FileShare.file_id).where(self._grants(user))
        return UploadedFile.id.in_(granted) & (UploadedFile.user != user.name)

    def grant_for(self, user, file_id):
        """A share through which ``user`` may read file ``file_id``, or None."""
        return (FileShare.select().where((FileShare.file_id == file_id) & self._grants(user))
                .order_by(FileShare.created_at).first())

    @staticmethod
    def _grants(user):
        groups = sorted({*user.groups, user.gid})
        return (((FileShare.kind == "user") & (FileShare.principal_id == user.uid))
                | ((FileShare.kind == "group") & FileShare.principal_id.in_(groups)))

    # -- helpers -------------------------------------------------------------

    def _recipient(self, owner, body):
        """(kind, name, uid or gid) of the body's recipient; 400/403 naming what is wrong."""
        given = [key for key in ("user", "group") if body.get(key) not in (None, "")]
        if len(given) != 1:
            raise ValidationError('Name one recipient: {"user": "<name>"} or {"group": "<unix group>"}.',
                                  errors={"user": "give user or group, not both or neither"})
        kind = given[0]
        name = body[kind]
        if not isinstance(name, str) or len(name) > 64:
            raise ValidationError(f"{kind} must be a name.", errors={kind: "must be a name"})
        if kind == "user":
            try:
                recipient = self._find_user(name)
            except PermissionDenied as exc:
                raise ValidationError(f"The file cannot be shared with {name!r}: {exc.message}",
                                      errors={"user": exc.message}) from None
            if recipient.uid == owner.uid:
                raise ValidationError("A file cannot be shared with its owner.",
                                      errors={"user": "is the file's owner"})
            return "user", recipient.name, recipient.uid
        try:
            group = grp.getgrnam(name)
        except KeyError:
            raise ValidationError(f"There is no unix group {name!r} on this cluster.",
                                  errors={"group": "no such group"}) from None
        if group.gr_gid not in {*owner.groups, owner.gid}:
            raise PermissionDenied(f"You can share files only with groups you belong to, and you are not "
                                   f"in {name!r}.", code="not_a_member")
        if group.gr_gid == 0:
            raise ValidationError("Files are not shared with the root group.", errors={"group": "root"})
        return "group", group.gr_name, group.gr_gid

    def _check_supported(self, owner, row):
        fd = self._storage.open_file(row.storage_path, owner_uid=owner.uid)
        try:
            if not self._acls.supported(fd):
                raise no_acls()
        finally:
            os.close(fd)

    def _folders(self, row):
        """The folders between the uploads root and the file: <owner>, files, <job>."""
        root = self._storage.root
        parts = os.path.relpath(row.storage_path, root).split(os.sep)
        if len(parts) != 4 or parts[0] != row.user or ".." in parts:
            raise NotFound("The file is no longer where its owner's files are kept.", code="file_missing")
        return [os.path.join(root, *parts[:depth]) for depth in (1, 2, 3)]

    def _release_folders(self, owner, row, kind, number, folders):
        """Remove the entries of ``kind`` ``number`` (uid or gid) from those of ``folders``
        that no other share of theirs (on another file of this owner) still needs."""
        others = (UploadedFile.select(UploadedFile.storage_path)
                  .join(FileShare, on=(FileShare.file_id == UploadedFile.id))
                  .where((FileShare.owner == row.user) & (FileShare.kind == kind)
                         & (FileShare.principal_id == number) & (FileShare.file_id != row.id)))
        needed = set()
        for other in others:
            with contextlib.suppress(NotFound):
                needed.update(self._folders(UploadedFile(storage_path=other.storage_path, user=row.user)))
        self._acls.revoke(owner, kind, number, [f for f in folders if f not in needed])

    def _locked(self):
        busy = ServiceUnavailable("The database is busy; try again.", code="database_busy",
                                  headers={"Retry-After": "5"})
        return database_lock(self._database, "file sharing", self._lock_timeout, busy)


def _account(name):
    entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)))
