"""Job folders: ``<uploads root>/<user>/jobs/<submission id>/``, owned by the user.

The daemon runs as root and the user owns the folders it works in, so every
step is taken through directory descriptors with ``O_NOFOLLOW``: a user who
swaps a folder or a file for a symlink makes the daemon refuse (409
``unsafe_path``), never follow. Files are opened without blocking and read only
when they are plain files owned by the job's user, so a job cannot point its
output at a file its user may not read, nor make a reader wait on a FIFO. A job
folder is removed through descriptors too (``safefiles.remove_tree``).
"""

import logging
import os

from ..errors import NotFound, UnsafePath
from ..safefiles import open_folder, open_regular, remove_tree

log = logging.getLogger("hpcportal.jobs")

DIR_MODE = 0o750
FILE_MODE = 0o640
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class JobFolders:
    def __init__(self, root):
        self.root = os.path.normpath(root)
        # Only root can hand folders to their users (and must check who owns them).
        self._chown = os.geteuid() == 0

    def path(self, user_name, submission_id):
        return os.path.join(self.root, user_name, "jobs", submission_id)

    def _own(self, fd, user, mode):
        if self._chown:
            os.fchown(fd, user.uid, user.gid)
        os.fchmod(fd, mode)

    def _step(self, parent, name, user, create, trusted_owner):
        refusal = f"The folder {name} was replaced (a symbolic link or not a folder); refusing to use it."
        try:
            fd = open_folder(name, parent, refusal)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, DIR_MODE, dir_fd=parent)
            except FileExistsError:
                pass
            fd = open_folder(name, parent, refusal)
            info = os.fstat(fd)
            if info.st_uid == os.geteuid() and self._chown:
                self._own(fd, user, DIR_MODE)
            return fd
        info = os.fstat(fd)
        if self._chown and info.st_uid not in trusted_owner:
            os.close(fd)
            raise UnsafePath(f"The folder {name} is not owned by its user; refusing to use it.")
        if create and self._chown and info.st_uid == os.geteuid():
            # Another submission of the user's is making this folder right now and has not
            # handed it over yet: hand it over here, or sbatch (run as the user) cannot reach it.
            self._own(fd, user, DIR_MODE)
        return fd

    def open_dir(self, user, submission_id=None, create=False):
        """A descriptor of the user's jobs folder (or one job's folder)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            os.makedirs(self.root, mode=0o755, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        parts = [user.name, "jobs"] + ([submission_id] if submission_id else [])
        try:
            for part in parts:
                child = self._step(fd, part, user, create, (user.uid, 0))
                os.close(fd)
                fd = child
            return fd
        except FileNotFoundError:
            os.close(fd)
            raise NotFound("The job's folder is gone.", code="job_folder_missing") from None
        except BaseException:
            os.close(fd)
            raise

    def create(self, user, submission_id, files):
        """A new job folder holding ``files`` ({name: (bytes, mode)}); its path."""
        with self.make(user, submission_id, files) as folder:
            return folder.path

    def make(self, user, submission_id, files):
        """A new job folder holding ``files``, kept open (a ``NewJobFolder``) for more."""
        parent = self.open_dir(user, create=True)
        try:
            os.mkdir(submission_id, DIR_MODE, dir_fd=parent)  # new: fails if it exists
            fd = os.open(submission_id, _DIR_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            self._own(fd, user, DIR_MODE)
            self._write(fd, user, files)
        except BaseException:
            os.close(fd)
            raise
        return NewJobFolder(self, user, fd, self.path(user.name, submission_id))

    def _write(self, folder_fd, user, files):
        for name, (data, mode) in files.items():
            file_fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              mode, dir_fd=folder_fd)
            try:
                self._own(file_fd, user, mode)
                view = memoryview(data)
                while view:
                    written = os.write(file_fd, view)
                    view = view[written:]
            except BaseException:
                os.unlink(name, dir_fd=folder_fd)
                raise
            finally:
                os.close(file_fd)

    def remove(self, user_name, submission_id):
        """Remove a job folder the daemon made, through descriptors: whatever the
        user put in its place or inside it is removed, never followed."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            for part in (user_name, "jobs"):
                child = open_folder(part, fd, f"The folder {part} was replaced; not removing job folders in it.")
                os.close(fd)
                fd = child
        except (OSError, UnsafePath) as exc:
            log.warning("job folder %s of %s left in place: %s", submission_id, user_name, exc)
            return
        try:
            remove_tree(fd, submission_id)
        except OSError as exc:
            log.warning("job folder %s of %s not wholly removed: %s", submission_id, user_name, exc)
        finally:
            os.close(fd)

    def open_file(self, owner, submission_id, name):
        """A read descriptor of a plain file in the job folder owned by ``owner`` (a User)."""
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            raise NotFound(f"There is no file {name!r} in the job's folder.", code="file_not_found")
        dfd = self.open_dir(owner, submission_id)
        refusal = f"{name} is not a plain file owned by the job's user; refusing to read it."
        try:
            fd, info = open_regular(name, os.O_RDONLY, dfd, refusal)
        except FileNotFoundError:
            raise NotFound(f"There is no file {name!r} in the job's folder.", code="file_not_found") from None
        finally:
            os.close(dfd)
        if self._chown and info.st_uid != owner.uid:
            os.close(fd)
            raise UnsafePath(refusal)
        return fd


class NewJobFolder:
    """A job folder just made, open by its descriptor until closed, so files added
    later go into this very folder without walking its path again."""

    def __init__(self, folders, user, fd, path):
        self._folders = folders
        self._user = user
        self._fd = fd
        self.path = path

    def add(self, files):
        """Writes ``files`` ({name: (bytes, mode)}, all new); a file that could not be
        written whole is removed, never left looking complete."""
        self._folders._write(self._fd, self._user, files)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
