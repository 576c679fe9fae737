"""A job's results: the plain files in its folder and sub-folders, listed and opened safely.

The job's user owns the folder and the job writes into it while the daemon
reads it (as root), so nothing is reached by a path: every step opens one name
relative to its parent's descriptor with ``O_NOFOLLOW``. A symlink, a FIFO, a
socket or another user's file anywhere on the way is left out of the list and
refused when asked for (``unsafe_path``), never followed or waited on: a name
is looked at before it is opened, opened with ``O_NONBLOCK`` and checked again
on the descriptor. The walk is bounded in files, depth and entries looked at,
so a job that writes a million names costs one bounded answer.
"""

import collections
import os
import stat

from ..errors import NotFound, UnsafePath, ValidationError
from ..safefiles import open_folder, open_regular
from .service import owner_of

MAX_FILES = 1000
MAX_DEPTH = 8  # folders below the job's folder
# Entries of any kind looked at per listing: bounds a folder of empty folders or FIFOs too.
MAX_SCANNED = 20000
MAX_PATH = 4096


def split_path(path):
    """The components of a path relative to the job's folder; ValidationError otherwise."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or "\x00" in path:
        raise ValidationError("The file path must be a non-empty path inside the job's folder.",
                              code="invalid_path", errors={"path": "empty, too long or with a NUL byte"})
    if path.startswith("/"):
        raise ValidationError("The file path must be relative to the job's folder.", code="invalid_path",
                              errors={"path": "absolute"})
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValidationError("The file path may not have empty, '.' or '..' parts.", code="invalid_path",
                              errors={"path": "empty, '.' or '..' part"})
    return parts


class JobResults:
    """``service``: the JobService (its ``folders`` and the job rows)."""

    def __init__(self, service, *, max_files=MAX_FILES, max_depth=MAX_DEPTH, max_scanned=MAX_SCANNED):
        self._service = service
        self._folders = service.folders
        self._max_files = max_files
        self._max_depth = max_depth
        self._max_scanned = max_scanned
        # Ownership means something only when the daemon could read anyone's files.
        self._check_owner = os.geteuid() == 0

    def _job(self, user, job_id):
        row = self._service.row_for(user, job_id)
        if row.submission_id is None:
            raise NotFound(f"Job {row.slurm_job_id} was not submitted through the portal: it has no job folder.",
                           code="job_not_found")
        owner = owner_of(row)
        return row, owner, self._folders.open_dir(owner, row.submission_id)

    # -- listing -------------------------------------------------------------------

    def list(self, user, job_id):
        """(job row, [{path, name, size, modified}] sorted by path, truncated)."""
        row, owner, top = self._job(user, job_id)
        try:
            files, truncated = self._walk(top, owner)
        finally:
            os.close(top)
        files.sort(key=lambda item: item["path"])
        return row, files, truncated

    def _walk(self, top, owner):
        # Breadth first: the files near the top (the job's output, its script) are
        # listed before a deep tree uses up the bounds.
        files, scanned, truncated = [], 0, False
        folders = collections.deque([()])
        while folders:
            parts = folders.popleft()
            fd = self._reopen(top, parts, owner)
            if fd is None:
                continue  # changed since it was listed
            try:
                entries, complete = self._entries(fd, self._max_scanned - scanned)
                scanned += len(entries)
                truncated = truncated or not complete
                for entry in entries:
                    if not _is_utf8(entry.name):
                        continue  # not UTF-8: no URL could name it again
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(info.st_mode) and self._owned(info, owner, folder=True):
                        if len(parts) < self._max_depth:
                            folders.append(parts + (entry.name,))
                        else:
                            truncated = True
                    elif stat.S_ISREG(info.st_mode) and self._owned(info, owner):
                        if len(files) >= self._max_files:
                            return files, True
                        files.append({"path": "/".join(parts + (entry.name,)), "name": entry.name,
                                      "size": info.st_size, "modified": info.st_mtime})
            finally:
                os.close(fd)
        return files, truncated

    def _entries(self, fd, budget):
        """(up to ``budget`` entries of the folder sorted by name, whether that was all)."""
        entries = []
        with os.scandir(fd) as scan:
            for entry in scan:
                if len(entries) >= budget:
                    return sorted(entries, key=lambda e: e.name), False
                entries.append(entry)
        return sorted(entries, key=lambda e: e.name), True

    def _reopen(self, top, parts, owner):
        try:
            return self._descend(top, parts, owner)
        except (NotFound, UnsafePath):
            return None

    # -- one file ----------------------------------------------------------------

    def open(self, user, job_id, path):
        """(job row, read descriptor) of the plain file at ``path`` in the job's folder."""
        parts = split_path(path)
        if len(parts) > self._max_depth + 1:
            raise NotFound(f"There is no file {path!r} in the job's folder.", code="file_not_found")
        row, owner, top = self._job(user, job_id)
        try:
            folder = self._descend(top, parts[:-1], owner)
        finally:
            os.close(top)
        try:
            return row, self._open_file(folder, parts[-1], path, owner)
        finally:
            os.close(folder)

    def _descend(self, top, parts, owner):
        """A new descriptor of the folder ``parts`` below ``top``."""
        fd = os.dup(top)
        try:
            for index, name in enumerate(parts):
                shown = "/".join(parts[:index + 1])
                info = _lstat(fd, name, shown)
                if not stat.S_ISDIR(info.st_mode):
                    _refuse_special(info, shown)
                    raise NotFound(f"{shown} is not a folder of the job.", code="file_not_found")
                try:
                    child = open_folder(name, fd, f"{shown} changed while it was opened; refusing to follow it.")
                except FileNotFoundError:
                    raise NotFound(f"There is no folder {shown!r} in the job's folder.",
                                   code="file_not_found") from None
                os.close(fd)
                fd = child
                if not self._owned(os.fstat(fd), owner, folder=True):
                    raise UnsafePath(f"The folder {shown} is not the job user's; refusing to read it.")
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_file(self, folder, name, shown, owner):
        info = _lstat(folder, name, shown)
        if stat.S_ISDIR(info.st_mode):
            raise NotFound(f"{shown} is a folder, not a file.", code="file_not_found")
        _refuse_special(info, shown)
        refusal = f"{shown} is not a plain file owned by the job's user; refusing to read it."
        try:
            fd, opened = open_regular(name, os.O_RDONLY, folder, refusal)
        except FileNotFoundError:
            raise NotFound(f"There is no file {shown!r} in the job's folder.", code="file_not_found") from None
        if not self._owned(opened, owner):
            os.close(fd)
            raise UnsafePath(refusal)
        return fd

    def _owned(self, info, owner, folder=False):
        # Folders made by the portal itself (root's) are fine; files must be the user's.
        allowed = (owner.uid, 0) if folder else (owner.uid,)
        return not self._check_owner or info.st_uid in allowed


def _lstat(folder, name, shown):
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        raise NotFound(f"There is no file {shown!r} in the job's folder.", code="file_not_found") from None
    except OSError as exc:  # a name too long, for one
        raise NotFound(f"There is no file {shown!r} in the job's folder ({exc.strerror}).",
                       code="file_not_found") from None


def _refuse_special(info, shown):
    """UnsafePath for anything but a plain file or a folder, named for what it is."""
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(f"{shown} is a symbolic link; the portal does not follow links in job folders.")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
            "a socket" if stat.S_ISSOCK(info.st_mode) else "a device or other special file"
        raise UnsafePath(f"{shown} is {kind}, not a plain file; refusing to read it.")


def _is_utf8(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by os as surrogates
        return False
    return True
