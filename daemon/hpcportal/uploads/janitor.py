"""Background clean-up: expired unfinished uploads, files past retention,
orphaned partial files, and tus uploads whose completion a crash cut short.

Every head node runs one; they never step on each other because each
removal is a conditional delete of the row (only the head whose delete
matched removes the data). A pass never waits on a user's file (they are
opened without blocking), and /readyz reports one that has not finished in
time anyway (``passes.PassClock``).
"""

import logging
import threading
import time

from ..passes import PassClock

log = logging.getLogger(__name__)

# After a failed pass, the next one comes this soon (or at the interval, if shorter).
RETRY_SECONDS = 15


class UploadJanitor:
    name = "uploads_cleanup"

    def __init__(self, uploads, database, interval, clock=time.monotonic):
        self._uploads = uploads
        self._database = database
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread = None
        self._last_error = None
        self._passes = PassClock(interval, clock=clock)

    def start(self):
        if self._thread is not None:
            return
        # Before the first request: a client retrying a completion that a crash
        # interrupted gets its file now, not once the dead run's lease runs out.
        try:
            with self._database.connection_context():
                self._uploads.release_abandoned_leases()
        except Exception as exc:  # the lease then simply runs out
            log.error("could not release a previous run's completion leases: %s", exc)
        self._stop.clear()
        self._passes.start()
        self._thread = threading.Thread(target=self._run, name="uploads-janitor", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def health(self):
        if self._thread is None or not self._thread.is_alive():
            return False, "not running"
        overdue = self._passes.overdue()
        if overdue:
            return False, overdue
        if self._last_error:
            # Clean-up can wait: a failed pass (e.g. during a database restart) must not
            # take every head out of the load balancer. The next pass comes soon.
            return True, f"degraded: last clean-up failed ({self._last_error}); retrying"
        if self._passes.last is None:
            return True, "starting"
        return True, f"last clean-up {self._passes.ago():.0f}s ago"

    def sweep(self):
        """One pass; returns (expired uploads, files removed by retention, orphans,
        stranded tus uploads finished)."""
        with self._database.connection_context():
            counts = (self._uploads.expire_stale(), self._uploads.apply_retention(),
                      self._uploads.remove_orphans(), self._uploads.finish_stranded_tus())
            self._uploads.prune_hashing()
            return counts

    def _run(self):
        while not self._stop.is_set():
            try:
                self.sweep()
                self._last_error = None
            except Exception as exc:  # keep running: the next pass may succeed
                self._last_error = str(exc) or type(exc).__name__
                log.exception("uploads clean-up failed")
            self._passes.finished()
            self._stop.wait(min(self._interval, RETRY_SECONDS) if self._last_error else self._interval)
