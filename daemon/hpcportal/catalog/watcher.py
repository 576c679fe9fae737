"""Watching catalog folders with watchdog; the callbacks only record paths.

``catalog.watcher``: ``inotify`` (kernel events; fast, local changes only),
``poll`` (watchdog's PollingObserver: compares folder snapshots every
``catalog.poll_interval`` seconds; sees changes made on other hosts) or
``auto``, which polls on network filesystems because inotify never hears of a
file written by another NFS/CIFS/Lustre client, and uses inotify elsewhere.
"""

import logging
import os

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

log = logging.getLogger("hpcportal.catalog")

# Filesystems where changes can come from other hosts (mountinfo type names).
NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
    "glusterfs", "fuse.glusterfs", "fuse.sshfs", "fuse.cephfs", "afs", "9p",
    "fuse.beegfs", "panfs", "pvfs2", "orangefs", "ocfs2", "gfs2",
}


def _unescape(field):
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def filesystem_type(path, mountinfo="/proc/self/mountinfo"):
    """The type of the filesystem holding ``path`` (its nearest existing parent)."""
    path = os.path.abspath(path)
    existing, rest = path, ""
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing, tail = os.path.split(existing)
        rest = os.path.join(tail, rest) if rest else tail
    # Symlinks resolved where they exist; a folder not created yet lies where it will be.
    path = os.path.join(os.path.realpath(existing), rest) if rest else os.path.realpath(existing)
    best, best_type = "", None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount_point = _unescape(fields[4])
                inside = (path == mount_point or mount_point == "/"
                          or path.startswith(mount_point.rstrip("/") + "/"))
                # Later lines win on equal mount points: they are mounted on top.
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, right.split()[0]
    except OSError:
        return None
    return best_type


def choose_mode(setting, root, mountinfo="/proc/self/mountinfo"):
    if setting in ("inotify", "poll"):
        return setting
    fstype = filesystem_type(root, mountinfo)
    return "poll" if fstype in NETWORK_FILESYSTEMS else "inotify"


class _Handler(FileSystemEventHandler):
    def __init__(self, notify, kind_name):
        self._notify = notify
        self._kind = kind_name

    def on_any_event(self, event):
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        directory = event.is_directory
        if directory and kind in ("modified", "closed"):
            return  # a folder's mtime changes with every file event inside it
        if kind == "moved":
            # The source is gone; the destination was renamed into place, complete.
            self._notify(self._kind, _text(event.src_path), is_directory=directory)
            self._notify(self._kind, _text(event.dest_path), immediate=True, is_directory=directory)
            return
        self._notify(self._kind, _text(event.src_path), is_directory=directory)


def _text(path):
    return os.fsdecode(path)


class Watcher:
    """One observer per mode; one recursive watch per catalog root."""

    def __init__(self, indexer, setting, poll_interval):
        self._indexer = indexer
        self._setting = setting
        self._poll_interval = poll_interval
        self._observers = {}
        self._roots = {}        # kind name -> (root, mode)
        self._watching = {}     # kind name -> watchdog ObservedWatch
        self._started = False

    def watch(self, kind_name, root):
        mode = choose_mode(self._setting, root)
        self._roots[kind_name] = (root, mode)
        log.info("catalog %s: watching %s with %s", kind_name, root, mode)

    def modes(self):
        return {name: (mode if name in self._watching else f"{mode} (folder missing)")
                for name, (root, mode) in self._roots.items()}

    def _observer(self, mode):
        observer = self._observers.get(mode)
        if observer is None:
            if mode == "poll":
                observer = PollingObserver(timeout=self._poll_interval)
            else:
                observer = Observer()
            observer.daemon = True
            self._observers[mode] = observer
            if self._started:
                observer.start()
        return observer

    def start(self):
        for name in self._roots:
            self._schedule(name)
        self._started = True
        for observer in self._observers.values():
            observer.start()

    def _schedule(self, name):
        root, mode = self._roots[name]
        if not os.path.isdir(root):
            return False
        try:
            watch = self._observer(mode).schedule(_Handler(self._indexer.notify, name), root,
                                                  recursive=True)
        except OSError as exc:
            log.warning("catalog %s: cannot watch %s: %s", name, root, exc)
            return False
        self._watching[name] = watch
        return True

    def missing(self):
        # A watched folder that was removed (or unmounted) lost its watch: drop it
        # so that it is watched again once it is back.
        for name, watch in list(self._watching.items()):
            root, mode = self._roots[name]
            if not os.path.isdir(root):
                log.warning("catalog %s: %s is gone; will watch it again when it is back",
                            name, root)
                try:
                    self._observers[mode].unschedule(watch)
                except (KeyError, ValueError, OSError):
                    pass
                del self._watching[name]
        return [name for name in self._roots if name not in self._watching]

    def retry_missing(self):
        for name in self.missing():
            if self._schedule(name):
                root = self._roots[name][0]
                log.info("catalog %s: %s exists now; watching it", name, root)
                self._indexer.notify(name, root, is_directory=True)

    def stop(self):
        for observer in self._observers.values():
            observer.stop()
        for observer in self._observers.values():
            if observer.is_alive():
                observer.join(timeout=10)
        self._observers.clear()
        self._watching.clear()
        self._started = False
