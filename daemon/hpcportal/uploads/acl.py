"""POSIX ACL entries on a user's files and folders, written as that user.

Debian's ``setfacl`` (package ``acl``) writes them: it keeps the ACL's mask
right (the group bits of ``ls -l``), which writing ``system.posix_acl_access``
by hand would have to redo. It runs with the owner's identity (``setpriv``,
as Slurm commands do), so the kernel itself checks that the owner owns what
is changed: a link or a folder a user swaps in changes only what that user
could change anyway, never someone else's file.
"""

import errno
import logging
import os
import subprocess

from ..errors import Conflict, NotSupportedHere
from ..slurm.runner import as_user

log = logging.getLogger(__name__)

SETFACL = "/usr/bin/setfacl"
# The extended attribute holding a file's access ACL (Linux).
ACCESS_ACL = "system.posix_acl_access"
NOT_SUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP)


def _entry(kind, number, perms=None):
    """``u:2002:r`` (with ``perms``) or ``u:2002`` (to remove it). By number: a user or
    group deleted or renamed since keeps its entries removable."""
    tag = {"user": "u", "group": "g"}[kind]
    return f"{tag}:{int(number)}" if perms is None else f"{tag}:{int(number)}:{perms}"


class PosixAcls:
    """``grant``/``revoke`` entries on paths, as their owner; ``supported(fd)``."""

    def __init__(self, setfacl=SETFACL, timeout=30):
        self._setfacl = setfacl
        self._timeout = timeout

    @staticmethod
    def supported(fd):
        """Whether the filesystem of the open file ``fd`` keeps POSIX ACLs."""
        try:
            os.getxattr(fd, ACCESS_ACL)
        except OSError as exc:
            if exc.errno in NOT_SUPPORTED:
                return False
            if exc.errno != errno.ENODATA:  # ENODATA: supported, none set yet
                raise
        return True

    def grant(self, owner, kind, number, perms, paths):
        """Give the user or group ``number`` (uid, gid) ``perms`` ("r", "x") on ``paths``."""
        self._run(owner, ["-m", _entry(kind, number, perms)], paths)

    def revoke(self, owner, kind, number, paths):
        """Remove the entries of that user or group; paths gone already are skipped."""
        self._run(owner, ["-x", _entry(kind, number)], [p for p in paths if os.path.lexists(p)])

    def _run(self, owner, args, paths):
        if not paths:
            return
        # -P: a symbolic link named here is skipped, never followed.
        argv = [self._setfacl, "-P", *args, "--", *paths]
        kwargs = {}
        if os.geteuid() == 0:
            argv, kwargs = as_user(owner, argv)
        try:
            answer = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, cwd="/",
                                    timeout=self._timeout, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, errors="replace", **kwargs)
        except FileNotFoundError:
            raise NotSupportedHere("Files cannot be shared: setfacl (Debian package acl) is not "
                                   "installed on this head node.", code="acl_unavailable") from None
        except subprocess.TimeoutExpired:
            raise Conflict("Changing the file's permissions took too long; try again.",
                           code="acl_failed") from None
        if answer.returncode != 0:
            message = " ".join(line.strip() for line in answer.stderr.splitlines() if line.strip())[:500]
            log.warning("setfacl %s as %s failed: %s", " ".join(args), owner.name, message)
            if "Operation not supported" in message:
                raise no_acls()
            raise Conflict(f"The file's permissions could not be changed: {message}", code="acl_failed")


def no_acls():
    """The error answered when the filesystem keeps no ACLs (501)."""
    return NotSupportedHere(
        "The uploads filesystem does not support POSIX ACLs, so files cannot be shared in place "
        "here; copy the file for the other user instead, or ask the administrators to mount the "
        "uploads filesystem with ACLs.", code="acls_not_supported")
