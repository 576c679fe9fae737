"""Files on the shared filesystem, opened so that users cannot redirect us.

Layout under the uploads root::

    <root>/<user>/files/<job_id or "unlinked">/<filename>   finished files
    <root>/<user>/files/.partial/<upload_id>                partial data

Users own (and may change) their folders, so every path below the root is
walked one component at a time with ``O_NOFOLLOW`` relative to the parent's
descriptor: a symlink planted anywhere in it is refused, never followed.
Files are created with ``O_EXCL``; existing ones are opened without blocking
and checked to be plain files (``safefiles.open_regular``: a FIFO or socket
planted in their place is refused, never waited on), partial files also of
the right owner with one link, before the daemon (often root) uses them. A
finished file appears under its final name with ``link()``, which never
replaces an existing name, then the partial name is removed: the move is
atomic and never overwrites.
"""

import errno
import fcntl
import os
import stat
import threading
import weakref

from ..errors import Conflict, InsufficientStorage, NotFound, UnsafePath
from ..safefiles import REFUSED, open_regular
from .names import PARTIAL_FOLDER, UNLINKED_FOLDER, numbered

DIR_MODE = 0o750
FILE_MODE = 0o640
BLOCK = 1024 * 1024
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# While a body is copied, the written part is handed to the disk every this
# many bytes, so the fsync before acknowledging has little left to wait for.
WRITEBACK_BYTES = 8 * BLOCK


class Truncated(Exception):
    """The body ended before the declared number of bytes arrived."""


class Storage:
    def __init__(self, root):
        self.root = root
        # Only root can hand files to their users; a daemon run as a plain
        # user (development) keeps them as its own.
        self._chown = os.geteuid() == 0
        # One lock per file being written, by (device, inode): see write_lock.
        self._write_locks = weakref.WeakValueDictionary()
        self._write_locks_guard = threading.Lock()

    # -- paths ---------------------------------------------------------------

    def files_folder(self, user):
        return os.path.join(self.root, user, "files")

    def final_path(self, user, job_id, name):
        return os.path.join(self.files_folder(user), job_id or UNLINKED_FOLDER, name)

    def _open_dir(self, parts, owner=None, create=True):
        """A descriptor of root/parts..., created (owned by ``owner``) as needed."""
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                child = self._step(fd, part, owner, create)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _step(self, parent, part, owner, create):
        """Open (or create) ``part`` inside ``parent``; never closes ``parent``."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(part, flags, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise NotFound("The file is no longer on disk.", code="file_missing") from None
        except OSError as exc:
            raise _unsafe(part, exc) from None
        try:
            os.mkdir(part, DIR_MODE, dir_fd=parent)
            created = True
        except FileExistsError:
            created = False  # another head created it in the meantime
        except OSError as exc:
            raise _storage_error(exc) from None
        try:
            child = os.open(part, flags, dir_fd=parent)
        except OSError as exc:
            raise _unsafe(part, exc) from None
        if created:
            self._own(child, owner, DIR_MODE)
        return child

    def _own(self, fd, owner, mode):
        if owner is not None and self._chown:
            os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, mode)

    def _partial_dir(self, user, owner=None, create=True):
        return self._open_dir([user, "files", PARTIAL_FOLDER], owner, create)

    # -- partial data --------------------------------------------------------

    def create_partial(self, user, owner, upload_id):
        dfd = self._partial_dir(user, owner)
        try:
            try:
                fd = os.open(upload_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, FILE_MODE, dir_fd=dfd)
            except OSError as exc:
                raise _storage_error(exc) from None
            try:
                self._own(fd, owner, FILE_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def open_partial(self, user, owner, upload_id, write=True, published=None):
        """The partial file's descriptor, checked to be the plain file we made.

        ``published`` is (job_id, name) where an interrupted completion may
        have linked it already: that one second link is ours, not a plant."""
        try:
            dfd = self._partial_dir(user, create=False)
        except NotFound:
            raise NotFound("The upload's partial data is gone; start the upload again.",
                           code="partial_missing") from None
        replaced = "The upload's partial file was replaced; refusing to use it."
        try:
            fd, info = open_regular(upload_id, os.O_RDWR if write else os.O_RDONLY, dfd, replaced)
        except FileNotFoundError:
            raise NotFound("The upload's partial data is gone; start the upload again.",
                           code="partial_missing") from None
        finally:
            os.close(dfd)
        if (not (info.st_nlink == 1 or self._is_published(user, info, published))
                or (self._chown and info.st_uid != owner[0])):
            os.close(fd)
            raise UnsafePath(replaced)
        return fd

    def _is_published(self, user, info, published):
        if not published or info.st_nlink != 2:
            return False
        job_id, name = published
        dfd = self._placed_as(user, job_id, name, info)
        if dfd is None:
            return False
        os.close(dfd)
        return True

    def _placed_as(self, user, job_id, name, info):
        """The folder's descriptor when ``name`` in the user's ``job_id`` folder
        is the very file ``info`` describes, else None."""
        try:
            dfd = self._open_dir([user, "files", job_id or UNLINKED_FOLDER], create=False)
        except (NotFound, Conflict, OSError):
            return None
        try:
            if os.path.samestat(os.stat(name, dir_fd=dfd, follow_symlinks=False), info):
                return dfd
        except OSError:
            pass
        os.close(dfd)
        return None

    def partial_files(self):
        """(user, name, mtime) of every plain file in the users' partial folders."""
        try:
            users = [e.name for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for user in users:
            try:
                dfd = self._partial_dir(user, create=False)
            except (NotFound, Conflict, OSError):
                continue
            try:
                for name in os.listdir(dfd):
                    try:
                        info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(info.st_mode):
                        yield user, name, info.st_mtime
            finally:
                os.close(dfd)

    def remove_partial(self, user, upload_id):
        try:
            dfd = self._partial_dir(user, create=False)
        except (NotFound, Conflict):
            return
        try:
            os.unlink(upload_id, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def write_lock(self, fd):
        """The lock this process takes around each write to ``fd``'s file.

        The kernel serialises buffered writes to one file anyway (ext4 takes the
        inode's lock), and a writer waiting for it spins on a CPU that the head
        needs for other requests (bench/RESULTS.md); waiting here sleeps
        instead, and the bytes reach the disk as fast."""
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        with self._write_locks_guard:
            lock = self._write_locks.get(key)
            if lock is None:
                lock = self._write_locks[key] = threading.Lock()
            return lock

    @staticmethod
    def lock_for_append(fd):
        """Take the lock (fcntl, seen by every head) one tus PATCH holds while it
        appends, or answer at once: the user owns the file and may hold a lock
        on it for as long as they like, and a worker waiting for it would be
        theirs for as long. Two PATCHes of one client never need to wait: the
        second one's offset is stale anyway."""
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise Conflict("Another request is writing this upload; ask for its offset (HEAD) and "
                           "resume from there.", code="upload_locked", headers={"Retry-After": "1"}) from None

    def write_at(self, fd, offset, stream, length, digests=(), exact=True):
        """Copy ``length`` bytes of ``stream`` to ``fd`` at ``offset``.

        Reads one block at a time, so memory stays flat whatever the size;
        never writes outside [offset, offset + length). Returns the number of
        bytes written; when ``exact``, raises Truncated if the stream ends
        early. The data is on disk (fsync) when this returns.
        """
        done = 0
        flushed = 0
        # One reusable buffer per call when the stream can fill it: no fresh
        # megabyte objects per block, so the heap does not grow with uploads.
        readinto = getattr(stream, "readinto", None)
        buffer = memoryview(bytearray(BLOCK)) if readinto else None
        try:
            lock = self.write_lock(fd)
            while done < length:
                want = min(BLOCK, length - done)
                if readinto:
                    view = buffer[:readinto(buffer[:want]) or 0]
                else:
                    view = memoryview(stream.read(want))
                if not view:
                    if exact:
                        raise Truncated(done)
                    break
                while view:
                    with lock:
                        written = os.pwrite(fd, view, offset + done)
                    for digest in digests:
                        digest.update(view[:written])
                    view = view[written:]
                    done += written
                if done - flushed >= WRITEBACK_BYTES:
                    _start_writeback(fd, offset + flushed, done - flushed)
                    flushed = done
            os.fsync(fd)
        except OSError as exc:
            raise _storage_error(exc) from None
        return done

    # -- finished files ------------------------------------------------------

    def hash_range(self, fd, digest, start, end=None, on_progress=None, release=False):
        """Feed bytes [start, end) (end: end of file) of ``fd`` to ``digest``;
        returns the offset reached. ``release``: the range is on disk already
        (fsynced) and read here for the last time, so its pages leave the page
        cache once hashed: see ``release_cached``."""
        offset = start
        buffer = memoryview(bytearray(BLOCK))
        while end is None or offset < end:
            want = BLOCK if end is None else min(BLOCK, end - offset)
            got = os.preadv(fd, [buffer[:want]], offset)
            if not got:
                break
            digest.update(buffer[:got])
            offset += got
            if on_progress:
                on_progress(offset)
        if release:
            self.release_cached(fd, start, offset)
        return offset

    @staticmethod
    def release_cached(fd, start, end):
        """Drop the (clean) cached pages of [start, end) of ``fd``.

        The head node never reads an upload again (jobs read it on compute
        nodes), so 50 GB of it would only push everything else out of the page
        cache. Memory the kernel frees this way is reused at once by the next
        chunk, which is cheaper than fresh memory (much cheaper on a VM whose
        host takes freed memory back)."""
        if end > start:
            try:
                os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
            except OSError:  # advice only
                pass

    def head(self, fd, length):
        return os.pread(fd, length, 0)

    def publish(self, user, owner, upload_id, job_id, name, previous=None, before_link=None):
        """Link the partial file into place as ``name`` or ``name (n)``; returns the name.

        The partial name stays until ``remove_partial`` (called once the file
        row is committed), so a crash in between loses nothing. ``previous``
        is the name an interrupted earlier attempt linked: reused when it is
        still the same file. ``before_link(candidate)`` records each name
        before it is tried.
        """
        pfd = self._partial_dir(user, create=False)
        try:
            tfd = self._open_dir([user, "files", job_id or UNLINKED_FOLDER], owner)
            try:
                try:
                    source = os.stat(upload_id, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    raise NotFound("The upload's partial data is gone; start the upload again.",
                                   code="partial_missing") from None
                if previous:
                    try:
                        placed = os.stat(previous, dir_fd=tfd, follow_symlinks=False)
                    except FileNotFoundError:
                        placed = None
                    if placed and os.path.samestat(placed, source):
                        return previous
                for number in range(0, 10000):
                    candidate = numbered(name, number)
                    if before_link:
                        before_link(candidate)
                    try:
                        os.link(upload_id, candidate, src_dir_fd=pfd, dst_dir_fd=tfd,
                                follow_symlinks=False)
                    except FileExistsError:
                        continue
                    except OSError as exc:
                        raise _storage_error(exc) from None
                    os.fsync(tfd)
                    return candidate
                raise Conflict(f"Too many files named like {name!r} in this folder.")
            finally:
                os.close(tfd)
        finally:
            os.close(pfd)

    def unpublish(self, user, upload_id, job_id, name):
        """Unlink ``name`` if it is the partial file's own link (what an
        interrupted ``publish`` left); a file of that name made since stays."""
        try:
            pfd = self._partial_dir(user, create=False)
        except (NotFound, Conflict):
            return False
        try:
            source = os.stat(upload_id, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(pfd)
        dfd = self._placed_as(user, job_id, name, source)
        if dfd is None:
            return False
        try:
            os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)
            return True
        finally:
            os.close(dfd)

    def _file_dir(self, path):
        relative = os.path.relpath(path, self.root)
        parts = relative.split(os.sep)
        if relative.startswith("..") or len(parts) < 2:
            raise NotFound("The file is no longer on disk.", code="file_missing")
        return parts[:-1], parts[-1]

    def open_file(self, path, owner_uid=None):
        """A read-only descriptor of a finished file, refusing symlinks, FIFOs and
        anything but a plain file and, with ``owner_uid``, files that user does
        not own (a hard link planted in place)."""
        folders, name = self._file_dir(path)
        dfd = self._open_dir(folders, create=False)
        try:
            fd, info = open_regular(name, os.O_RDONLY, dfd,
                                    "The stored file is not a plain file any more.")
        except FileNotFoundError:
            raise NotFound("The file is no longer on disk.", code="file_missing") from None
        finally:
            os.close(dfd)
        if owner_uid is not None and info.st_uid != owner_uid:
            os.close(fd)
            raise UnsafePath("The stored file is not owned by its user any more.")
        return fd

    def remove_file(self, path):
        try:
            folders, name = self._file_dir(path)
            dfd = self._open_dir(folders, create=False)
        except (NotFound, Conflict):
            return
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def free_bytes(self):
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        info = os.statvfs(self.root)
        return info.f_bavail * info.f_frsize


def _start_writeback(fd, offset, length):
    """Start (not wait for) writing a range to disk; Linux only, best effort."""
    try:
        os.sync_file_range(fd, offset, length, os.SYNC_FILE_RANGE_WRITE)
    except (AttributeError, OSError):
        pass


def _storage_error(exc):
    if exc.errno in NO_SPACE:
        return InsufficientStorage(
            "The uploads filesystem is full; the upload can be resumed once space is freed.",
            headers={"Retry-After": "60"})
    return exc


def _unsafe(part, exc):
    if exc.errno in REFUSED:
        return UnsafePath(f"'{part}' in the upload folder is a symbolic link or not a folder; "
                          "refusing to follow it.")
    return exc
