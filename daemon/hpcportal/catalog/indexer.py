"""The generic catalog indexer: keeps a database index equal to a folder.

Administrators drop, replace, rename and delete files by hand (``cp``,
``rsync``, ``mv``), often over NFS, while daemons run on several head nodes.
The indexer owns everything that is the same for every catalog: watching,
settling, debouncing, periodic reconciliation and the decision whether a file
changed (size, mtime_ns, inode, companions).

A kind (``kinds.CatalogKind``) owns what a file means and where it is
stored (``index_store.ModelKind``).

Other areas are told about changes through listeners:
``indexer.add_listener(callback)``; ``callback(result: ScanResult)`` runs after
each batch that changed any kind (``result.kind`` says which), in the
indexer's thread. Templates use it to re-evaluate ``ready`` when images change.
A listener must not raise (exceptions are logged and ignored).

Guarantees
----------
- Never index a half-copied file: a file is read once its size and mtime have
  stayed unchanged for ``catalog.settle_seconds``; a file renamed into place
  (``mv``, rsync's final rename) is read at once.
- Event callbacks only record paths; one worker thread does the work once
  events stop for a moment (debounce).
- ``scan()``: a full reconciliation (at start-up, every
  ``catalog.rescan_interval``, on ``POST .../scan`` and ``hpcportald scan``)
  makes the index equal to the folder. Unchanged files are not re-read.
- An unreadable file is stored invalid with its reason, logged once (when its
  state changes, not on every scan) and re-read when it changes.
- A root that is missing (unmounted) or a folder that cannot be listed never
  empties the index: such a scan removes nothing. A watched root that goes
  away is watched again when it comes back.
- Names that are not valid UTF-8 are skipped (logged once).

A daemon has one indexer; the portal's builder registers each kind with it
and runs it as a background service.
"""

import collections
import fnmatch
import logging
import os
import threading
import time

import peewee
from prometheus_client import Counter, Gauge, Histogram

from ..passes import PassClock
from . import watcher as watchermod
from .kinds import CatalogKind, Entry, FileState, InvalidFile, ScanResult

log = logging.getLogger("hpcportal.catalog")

# A short quiet period after the last event before the worker looks at paths.
DEBOUNCE_SECONDS = 0.2
# Under a constant stream of events, the worker still runs at least this often.
MAX_EVENT_DELAY = 5.0
# Entries stored per transaction during a scan: one commit instead of one per
# file, while holding the database's write lock only briefly (other daemons).
STORE_BATCH = 32
FAILED_SCAN_RETRY = 30.0
TEMPORARY_PATTERNS = ("*.tmp", "*.part", "*~", "*.swp")

_unusable_logged = set()


def is_usable_name(relpath):
    """Names that are not valid UTF-8 cannot be stored or served as JSON: skipped
    (logged once) instead of failing every batch they are part of."""
    try:
        relpath.encode("utf-8")
        return True
    except UnicodeEncodeError:
        if relpath not in _unusable_logged:
            _unusable_logged.add(relpath)
            log.warning("catalog: ignoring %r: the file name is not valid UTF-8",
                        relpath.encode("utf-8", "surrogateescape"))
        return False


def is_temporary(relpath):
    """Names that copy tools use while writing (rsync's ``.name.XXXXXX``, ``*.part``)."""
    parts = relpath.split("/")
    if any(part.startswith(".") for part in parts):
        return True
    return any(fnmatch.fnmatchcase(parts[-1], pattern) for pattern in TEMPORARY_PATTERNS)


def relative_to(root, path):
    """``path`` relative to ``root`` with "/" separators, or None when outside."""
    root = root.rstrip(os.sep) or os.sep
    if path == root:
        return ""
    if not path.startswith(root + os.sep):
        return None
    return path[len(root) + 1:].replace(os.sep, "/")


class _Pending:
    """A path seen by the watcher and not yet dealt with."""

    __slots__ = ("kind", "relpath", "immediate", "state", "since", "events", "immediate_event")

    def __init__(self, kind, relpath):
        self.kind = kind
        self.relpath = relpath
        self.events = 0         # bumped by every notify: "news since you looked"
        self.immediate_event = 0
        self.immediate = False
        self.state = None       # last observed FileState
        self.since = None       # monotonic time the state was first observed


class Indexer:
    """The background service behind every catalog kind of one daemon."""

    name = "catalog"

    def __init__(self, settings, registry, database=None, clock=time.monotonic):
        self._database = database
        self._settle = settings.settle_seconds
        self._poll_interval = settings.poll_interval
        self._rescan_interval = settings.rescan_interval
        self._passes = PassClock(settings.rescan_interval)  # a turn of the loop, a scan at the longest
        self._watch_mode = settings.watcher
        self._clock = clock
        self._kinds = collections.OrderedDict()
        self._listeners = []
        self._lock = threading.RLock()          # one batch at a time in this daemon
        self._wakeup = threading.Condition()
        self._pending = {}                      # (kind name, relpath) -> _Pending
        self._last_event = 0.0
        self._first_event = None
        self._stop = threading.Event()
        self._thread = None
        self._watcher = None
        self._last_scan = None
        self._last_error = None
        self._metrics(registry)

    # -- setup -------------------------------------------------------------

    def _metrics(self, registry):
        self._m_files = Gauge("hpcportal_catalog_files", "Files in the catalog index",
                              ["kind", "state"], registry=registry)
        self._m_scan = Histogram("hpcportal_catalog_scan_duration_seconds",
                                 "Duration of full catalog reconciliations", ["kind"],
                                 registry=registry,
                                 buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
        self._m_events = Counter("hpcportal_catalog_watcher_events",
                                 "File system events received by the catalog watcher",
                                 ["kind"], registry=registry)
        self._m_changes = Counter("hpcportal_catalog_changes", "Index changes",
                                  ["kind", "action"], registry=registry)

    def register(self, kind: CatalogKind):
        if kind.name in self._kinds:
            raise ValueError(f"catalog kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind
        self._m_files.labels(kind.name, "valid")
        self._m_files.labels(kind.name, "invalid")

    def kind(self, name):
        return self._kinds[name]

    def add_listener(self, callback):
        self._listeners.append(callback)

    # -- the service -------------------------------------------------------

    def start(self):
        if self._thread:
            return
        self._stop.clear()
        self._passes.start()
        self._watcher = watchermod.Watcher(self, self._watch_mode, self._poll_interval)
        for kind in self._kinds.values():
            self._watcher.watch(kind.name, kind.root)
        self._watcher.start()
        self._thread = threading.Thread(target=self._run, name="catalog-indexer", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        with self._wakeup:
            self._wakeup.notify_all()
        if self._watcher:
            self._watcher.stop()
        if self._thread:
            self._thread.join(timeout=30)
        self._thread = None

    def health(self):
        if self._thread is None:
            return True, "not started"
        if not self._thread.is_alive() or self._passes.overdue():
            return False, self._passes.overdue() or "indexer thread stopped"
        modes = self._watcher.modes() if self._watcher else {}
        detail = ", ".join(f"{name}: {mode}" for name, mode in modes.items())
        if self._last_scan is None:
            detail += "; initial scan running"
        if self._last_error:
            detail += f"; last error: {self._last_error}"
        return True, detail

    # -- events (called from watchdog threads: record only) ------------------

    def notify(self, kind_name, path, immediate=False, is_directory=False):
        kind = self._kinds.get(kind_name)
        if kind is None:
            return
        relpath = relative_to(os.path.normpath(kind.root), os.path.normpath(path))
        if relpath is None:
            return
        self._m_events.labels(kind_name).inc()
        if relpath and (is_temporary(relpath) or not is_usable_name(relpath)):
            return
        if not is_directory and relpath:
            owned = kind.owner_of(relpath)
            if owned:
                relpath = owned   # the image's own state still has to settle
            elif not kind.accepts(relpath):
                # Unknown names may be folders (deleted ones no longer tell).
                if os.path.isfile(path):
                    return
        with self._wakeup:
            key = (kind_name, relpath)
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending(kind_name, relpath)
            pending.immediate = pending.immediate or immediate
            pending.events += 1
            if immediate:
                pending.immediate_event = pending.events
            now = self._clock()
            self._last_event = now
            if self._first_event is None:
                self._first_event = now
            self._wakeup.notify_all()

    # -- the worker --------------------------------------------------------

    def _run(self):
        next_scan = self._clock()
        while not self._stop.is_set():
            self._passes.finished()
            now = self._clock()
            if now >= next_scan:
                ok = self._safely(self.scan)
                # A failed scan (database down) is retried soon, not in 10 minutes.
                delay = self._rescan_interval if ok else min(self._rescan_interval, FAILED_SCAN_RETRY)
                next_scan = self._clock() + delay
                if self._watcher:
                    self._watcher.retry_missing()
                continue
            due = self._pending_due(now)
            if due is not None and due <= now:
                self._safely(self._process_pending)
                continue
            timeout = next_scan - now
            if due is not None:
                timeout = min(timeout, due - now)
            if self._watcher and self._watcher.missing():
                self._watcher.retry_missing()
            # Wake up now and then to notice a watched folder that went away.
            timeout = min(timeout, 2 * max(self._poll_interval, 1.0))
            with self._wakeup:
                if self._stop.is_set():
                    break
                self._wakeup.wait(timeout=max(0.01, timeout))

    def _safely(self, func, **kwargs):
        try:
            func(**kwargs)
            self._last_error = None
            return True
        except Exception as exc:  # the watcher must survive a database hiccup
            self._last_error = str(exc)[:200]
            log.exception("catalog indexing failed; will retry")
            self._stop.wait(min(1.0, self._poll_interval))
            return False
        finally:
            self._release_connection()

    def _release_connection(self):
        """Server databases: give the connection back between batches (a
        connection idle for hours is dropped by the server). SQLite keeps it."""
        database = self._database
        if database is None or isinstance(database, peewee.SqliteDatabase):
            return
        try:
            if not database.is_closed() and not database.in_transaction():
                database.close()
        except peewee.PeeweeException:
            log.debug("closing the indexer's connection failed", exc_info=True)

    def _pending_due(self, now):
        """When the worker should next look at pending paths, or None."""
        with self._wakeup:
            if not self._pending:
                return None
            quiet = self._last_event + DEBOUNCE_SECONDS
            forced = (self._first_event or now) + MAX_EVENT_DELAY
            due = min(quiet, forced)
            settling = [p.since + self._settle for p in self._pending.values()
                        if p.since is not None and not p.immediate]
            fresh = any(p.since is None or p.immediate for p in self._pending.values())
            if not fresh and settling:
                due = max(due, min(settling))
            return due

    def _process_pending(self):
        with self._wakeup:
            batch = [(p, p.events) for p in self._pending.values()]
            self._first_event = None
        results = {}
        now = self._clock()
        with self._lock:
            for pending, events_seen in batch:
                kind = self._kinds[pending.kind]
                result = results.setdefault(kind.name, ScanResult(kind.name))
                done = self._look_at(kind, pending, now, result)
                with self._wakeup:
                    if pending.events != events_seen:
                        # News while we looked: look again (at once only for a new rename).
                        pending.immediate = pending.immediate_event > events_seen
                    elif done and self._pending.get((kind.name, pending.relpath)) is pending:
                        del self._pending[(kind.name, pending.relpath)]
            for result in results.values():
                if result.changed or result.invalid:
                    self._finish(self._kinds[result.kind], result)

    def _look_at(self, kind, pending, now, result):
        """Deal with one pending path; False while it is still settling."""
        if not os.path.isdir(kind.root):
            return True   # root gone (unmounted?): keep the index; the watcher re-attaches
        path = os.path.join(kind.root, *pending.relpath.split("/")) if pending.relpath else kind.root
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self._remove_below(kind, pending.relpath, result)
            return True
        except OSError as exc:
            log.warning("catalog %s: cannot stat %s: %s", kind.name, path, exc.strerror)
            return True
        if os.path.isdir(path):
            # A folder appeared or was renamed into place: everything in it.
            for relpath in self._walk(kind, path):
                self.notify(kind.name, os.path.join(kind.root, relpath), immediate=pending.immediate)
            self._remove_below(kind, pending.relpath, result)
            return True
        if not kind.accepts(pending.relpath):
            return True
        state = FileState.of(stat, kind.companion_state(path))
        if pending.immediate:
            self._index_one(kind, pending.relpath, path, state, result)
            return True
        if pending.state != state:
            pending.state, pending.since = state, now
            return False
        if now - pending.since < self._settle:
            return False
        self._index_one(kind, pending.relpath, path, state, result)
        return True

    def _index_one(self, kind, relpath, path, state, result, known=None):
        """Read and store one file unless the index already has this state."""
        prepared = self._read_one(kind, relpath, path, state, result, known)
        if prepared:
            self._store_all(kind, [prepared], result)

    def _read_one(self, kind, relpath, path, state, result, known=None):
        """(entry, previous state) to store, or None when there is nothing to store."""
        previous = known.get(relpath) if known is not None else kind.state_of(relpath)
        if previous == state:
            result.unchanged += 1
            return None
        entry = self._parse(kind, relpath, path, state)
        if entry is None:  # changed while being read: still being written
            result.deferred.append(relpath)
            self.notify(kind.name, path)
            return None
        return entry, previous

    def _store_all(self, kind, prepared, result):
        """Store read entries; several in one transaction (one commit, one fsync)."""
        if not prepared:
            return
        kind.store_many([entry for entry, _ in prepared])
        for entry, previous in prepared:
            action = "added" if previous is None else "updated"
            getattr(result, action).append(entry.relpath)
            self._m_changes.labels(kind.name, action).inc()
            if not entry.valid:
                result.invalid.append(entry.relpath)
                # Logged here, once per change of the file, never on unchanged rescans.
                log.warning("catalog %s: %s is invalid: %s", kind.name, entry.path, entry.error)
            else:
                log.info("catalog %s: indexed %s", kind.name, entry.path)

    def _parse(self, kind, relpath, path, state):
        try:
            document, error = kind.parse(path, relpath), None
        except InvalidFile as exc:
            document, error = None, str(exc) or "invalid file"
        except Exception as exc:  # a bug in a parser must not stop the watcher
            log.exception("catalog %s: reading %s failed", kind.name, path)
            document, error = None, f"cannot be read: {exc}"
        try:
            after = FileState.of(os.stat(path), kind.companion_state(path))
        except FileNotFoundError:
            return None
        if after != state:
            return None
        return Entry(relpath, path, state, document, error)

    def _remove_below(self, kind, relpath, result):
        """Forget ``relpath``, or everything under it when it was a folder."""
        if relpath and kind.accepts(relpath):
            candidates = [relpath] if kind.state_of(relpath) is not None else []
        else:
            prefix = relpath + "/" if relpath else ""
            candidates = [r for r in kind.known() if r == relpath or r.startswith(prefix)]
        self._remove_gone(kind, candidates, result)

    def _remove_gone(self, kind, relpaths, result):
        """Forget those of ``relpaths`` that are really gone: another daemon may
        have re-created one meanwhile."""
        gone = [r for r in relpaths if not os.path.exists(os.path.join(kind.root, *r.split("/")))]
        if gone:
            kind.remove(gone)
            result.removed.extend(gone)
            self._m_changes.labels(kind.name, "removed").inc(len(gone))
            for r in gone:
                log.info("catalog %s: removed %s", kind.name, r)

    def index_now(self, kind_name, relpaths):
        """Index (or forget) these files at once, without waiting for them to settle:
        for files the daemon itself has just written whole or removed. The
        ``ScanResult``; listeners are told as after any batch."""
        kind = self._kinds[kind_name]
        result = ScanResult(kind.name)
        with self._lock:
            for relpath in relpaths:
                path = os.path.join(kind.root, *relpath.split("/"))
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    self._remove_below(kind, relpath, result)
                    continue
                self._index_one(kind, relpath, path, FileState.of(stat, kind.companion_state(path)), result)
            self._finish(kind, result)
        return result

    # -- full reconciliation -------------------------------------------------

    def scan(self, names=None):
        """Make the index of each kind (all by default) equal to its folder.

        Returns ``{kind name: ScanResult}``. Files still being written (modified
        less than the settle time ago, or changing while read) are deferred to
        the watcher, not indexed half-way.
        """
        names = list(self._kinds) if names is None else list(names)
        for name in names:
            if name not in self._kinds:
                raise KeyError(name)
        results = {}
        with self._lock:
            for name in names:
                kind = self._kinds[name]
                started = time.monotonic()
                result = ScanResult(name)
                self._reconcile(kind, result)
                result.duration_ms = int((time.monotonic() - started) * 1000)
                self._m_scan.labels(name).observe(result.duration_ms / 1000)
                results[name] = result
                self._finish(kind, result)
                if result.changed:
                    log.info("catalog %s: scan added %d, updated %d, removed %d, invalid %d in %d ms",
                             name, len(result.added), len(result.updated), len(result.removed),
                             len(result.invalid), result.duration_ms)
        self._last_scan = time.time()
        return results

    def _reconcile(self, kind, result):
        known = kind.known()
        seen = set()
        batch = []
        walk_errors = []
        wall_now = time.time()
        if not os.path.isdir(kind.root):
            # Unmounted or not created yet: an NFS outage must not empty the catalog.
            if known:
                log.warning("catalog %s: %s is not a folder now; the index is kept as it is",
                            kind.name, kind.root)
            return
        for relpath in self._walk(kind, kind.root, walk_errors):
            if self._stop.is_set() and self._thread is not None:
                # Stopping: keep what was read; what was not seen is not "vanished".
                self._store_all(kind, batch, result)
                return
            path = os.path.join(kind.root, *relpath.split("/"))
            try:
                stat = os.stat(path)
            except OSError:
                continue
            seen.add(relpath)
            state = FileState.of(stat, kind.companion_state(path))
            if known.get(relpath) == state:
                result.unchanged += 1
                continue
            if wall_now - stat.st_mtime < self._settle:
                # Modified a moment ago: perhaps still being copied.
                result.deferred.append(relpath)
                self.notify(kind.name, path)
                continue
            prepared = self._read_one(kind, relpath, path, state, result, known=known)
            if prepared:
                batch.append(prepared)
            if len(batch) >= STORE_BATCH:
                self._store_all(kind, batch, result)
                batch = []
        self._store_all(kind, batch, result)
        if walk_errors:
            log.warning("catalog %s: cannot list %s (%s); nothing is removed until it can be",
                        kind.name, walk_errors[0].filename, walk_errors[0].strerror)
            return
        self._remove_gone(kind, [r for r in known if r not in seen], result)

    def _walk(self, kind, top, errors=None):
        """Relpaths of the files under ``top`` that ``kind`` accepts; folders that
        cannot be listed are appended to ``errors``."""
        root = os.path.normpath(kind.root)
        onerror = errors.append if errors is not None else None
        for folder, dirs, files in os.walk(top, onerror=onerror, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                relpath = relative_to(root, os.path.join(folder, name))
                if (relpath and not is_temporary(relpath) and kind.accepts(relpath)
                        and is_usable_name(relpath)):
                    yield relpath

    def _finish(self, kind, result):
        try:
            valid, invalid = kind.count()
            self._m_files.labels(kind.name, "valid").set(valid)
            self._m_files.labels(kind.name, "invalid").set(invalid)
        except Exception:
            log.exception("catalog %s: counting failed", kind.name)
        if not result.changed:
            return
        for callback in [kind.after_scan, *self._listeners]:
            try:
                callback(result)
            except Exception:
                log.exception("catalog %s: listener %r failed", kind.name, callback)

    # -- for tests and tools -------------------------------------------------

    def idle(self):
        with self._wakeup:
            return not self._pending
