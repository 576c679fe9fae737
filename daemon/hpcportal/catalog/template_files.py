"""Users' own template files under ``<templates root>/users/<name>/``.

Each user owns their folder and may put anything there (a symbolic link to a
file they cannot read, a FIFO, a hard link), so the daemon, running as root:

- reads a file there only through folder descriptors opened with
  ``O_NOFOLLOW`` and only when it is a plain file owned by that user (or root);
- creates ``users/`` and ``users/<name>/`` itself (descriptors again, refusing
  a symbolic link in their place) and hands the latter to the user;
- writes and removes files in it *as the user* (``setpriv``, like Slurm
  commands): whatever the user has linked there, the kernel grants only what
  the user could do anyway.
"""

import os
import pwd
import subprocess

from ..errors import Conflict, ServiceUnavailable, UnsafePath
from ..safefiles import open_folder, open_regular
from ..slurm.runner import as_user, clean_environment
from .templates.ids import USERS_SOURCE

# Only the user (and the daemon, as root) reads a user's templates, as only they see them in the API.
USER_DIR_MODE = 0o700
SHARED_DIR_MODE = 0o755
WRITE_TIMEOUT = 30
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# $1 folder (made if missing), $2 file name; the text on stdin. Renamed into
# place whole, so the watcher never reads half a file.
_WRITE = ('umask 077 && mkdir -p -- "$1" && cat > "$1/.$2.part" && mv -f -- "$1/.$2.part" "$1/$2" '
          '|| { rm -f -- "$1/.$2.part"; exit 1; }')
# Each argument a file to remove; its folder goes too once empty.
_REMOVE = 'for f in "$@"; do rm -f -- "$f" && rmdir -- "${f%/*}" 2>/dev/null; done; exit 0'


def is_user_file(relpath):
    return relpath.split("/", 1)[0] == USERS_SOURCE


def _uid_of(name):
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def read_user_file(root, relpath, limit):
    """Up to ``limit`` bytes of ``users/<name>/...``; UnsafePath for anything but
    a plain file owned by <name> (or root, an administrator's drop) reached without
    a symbolic link."""
    parts = relpath.split("/")
    refusal = f"{relpath} is not a plain file of its user (a symbolic link, or another's file)"
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            child = open_folder(part, fd, refusal)
            os.close(fd)
            fd = child
        file_fd, info = open_regular(parts[-1], os.O_RDONLY, fd, refusal)
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as handle:
        owner = _uid_of(parts[1]) if len(parts) > 2 else None
        # A root-owned file with a second name may be a hard link to a file the user cannot read.
        if not (info.st_uid == owner or (info.st_uid == 0 and info.st_nlink == 1)):
            raise UnsafePath(refusal)
        return handle.read(limit)


class UserTemplateFiles:
    """Writes and removes files in users' template folders, as the user."""

    def __init__(self, root, run=subprocess.run):
        self.root = os.path.normpath(root)
        self._run = run
        self._chown = os.geteuid() == 0

    def folder(self, user):
        """The absolute path of ``users/<name>``, made (and handed to the user) when missing."""
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            users = self._step(fd, USERS_SOURCE, None)
            os.close(fd)
            fd = users
            os.close(self._step(fd, user.name, user))
        finally:
            os.close(fd)
        return os.path.join(self.root, USERS_SOURCE, user.name)

    def _step(self, parent, name, owner):
        refusal = f"The templates folder {name} was replaced (a symbolic link or not a folder)."
        try:
            fd = open_folder(name, parent, refusal)
        except FileNotFoundError:
            try:
                # users/ itself is traversed by every user on the way to their own folder.
                os.mkdir(name, USER_DIR_MODE if owner is not None else SHARED_DIR_MODE, dir_fd=parent)
            except FileExistsError:
                pass
            fd = open_folder(name, parent, refusal)
        if owner is None or not self._chown:
            return fd
        info = os.fstat(fd)
        if info.st_uid == 0:
            # Made just now, or by an administrator: the folder is the user's to write in.
            os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, USER_DIR_MODE)
        elif info.st_uid != owner.uid:
            os.close(fd)
            raise UnsafePath(f"The templates folder users/{name} belongs to someone else; refusing to use it.")
        return fd

    def write(self, user, relpath, text):
        """Write ``users/<name>/<relpath>`` (folders made as needed) as the user."""
        base = self.folder(user)
        folder, _, name = relpath.rpartition("/")
        target = os.path.join(base, *folder.split("/")) if folder else base
        self._as_user(user, [_WRITE, target, name], text.encode("utf-8"))

    def remove(self, user, relpaths):
        """Remove files of ``users/<name>/`` (relative to the templates root) as the user."""
        base = os.path.join(self.root, USERS_SOURCE, user.name) + "/"
        paths = [os.path.join(self.root, *r.split("/")) for r in relpaths]
        if any(not p.startswith(base) for p in paths):
            raise ValueError("only files of the user's own folder are removed")
        if paths:
            self._as_user(user, [_REMOVE, *paths], b"")

    def _as_user(self, user, arguments, data):
        argv, kwargs = as_user(user, ["/bin/sh", "-c", arguments[0], "sh", *arguments[1:]])
        try:
            done = self._run(argv, input=data, capture_output=True, timeout=WRITE_TIMEOUT,
                             env=clean_environment(user), cwd="/", check=False, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceUnavailable(f"Your templates folder cannot be written now: {exc}.",
                                     code="templates_folder_unavailable") from None
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise Conflict(
                f"Your templates folder cannot be written: {reason[-1] if reason else 'unknown error'}.",
                code="templates_folder_unwritable")


def write_shared(root, source, relpath, text):
    """Write ``<source>/<relpath>`` (an administrators' folder such as ``community``) as
    the daemon, through descriptors; Conflict when the file exists already."""
    parts = [source, *relpath.split("/")]
    refusal = "A folder on the way was replaced (a symbolic link or not a folder)."
    os.makedirs(root, mode=0o755, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            child = open_folder(part, fd, refusal)
            os.close(fd)
            fd = child
        name = parts[-1]
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            raise Conflict(f"{'/'.join(parts)} exists already.", code="template_version_exists")
        except FileNotFoundError:
            pass
        temporary = f".{name}.part"
        file_fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o644, dir_fd=fd)
        try:
            with os.fdopen(file_fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=fd)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
