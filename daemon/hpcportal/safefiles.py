"""Opening and removing what users control on disk, without following it or waiting on it.

Users own their upload and job folders and may put anything there at any
moment: a symbolic link, a FIFO, a socket, a folder where a file was. Each
name is opened relative to its folder's descriptor with ``O_NOFOLLOW`` (a
symbolic link is refused, never followed) and ``O_NONBLOCK`` (opening a FIFO
would otherwise wait for a writer for ever, holding a worker thread or a
background pass); then the descriptor, not the name, is checked to be a
plain file, and only then does it block again like any file.
"""

import errno
import os
import stat

from .errors import UnsafePath

# What open(2) answers when the name is not a plain file of ours: a symbolic
# link (ELOOP), a socket or a FIFO without a reader opened for writing (ENXIO),
# a device without a driver (ENODEV), a folder opened for writing (EISDIR), a
# lease another process holds (EAGAIN), a file where a folder was (ENOTDIR).
REFUSED = frozenset({errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EISDIR, errno.EAGAIN,
                     errno.ENOTDIR, errno.EMLINK})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(name, flags, dir_fd, refusal):
    """(descriptor, stat) of the plain file ``name`` in the folder ``dir_fd``,
    opened with ``flags`` (O_RDONLY, O_RDWR, ...).

    FileNotFoundError passes through: the caller knows what is missing. Any
    other kind of file raises UnsafePath with the message ``refusal``."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in REFUSED:
            raise UnsafePath(refusal) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(refusal)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def open_folder(name, dir_fd, refusal):
    """A descriptor of the folder ``name`` in ``dir_fd``; a symbolic link or
    anything else in its place raises UnsafePath (FileNotFoundError passes)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in REFUSED:
            raise UnsafePath(refusal) from None
        raise


def remove_tree(dir_fd, name):
    """Remove the folder ``name`` of ``dir_fd`` and all it holds.

    Works on descriptors all the way down and never follows a symbolic link:
    a link (or any other file) found in the folder's place, or inside it, is
    removed itself, and what it points to stays. A name swapped while this runs
    is at worst left behind (the removal fails), never followed."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        _unlink(dir_fd, name)
        return
    try:
        with os.scandir(fd) as entries:
            children = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        for child, is_dir in children:
            if is_dir:
                remove_tree(fd, child)
            else:
                _unlink(fd, child)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _unlink(dir_fd, name):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # became a folder since it was listed
        remove_tree(dir_fd, name)
