"""Background clean-up: expired unfinished uploads, files past retention,
orphaned partial files, and tus uploads whose completion a crash cut short.

Every head node runs one; they never step on each other because each
removal is a conditional delete of the row (only the head whose delete
matched removes the data). A pass never waits on a user's file (they are
opened without blocking), and /readyz reports one that has not finished in
time anyway (``passes.PassClock``).
"""

import logging
import time

from ..passes import PassLoop

log = logging.getLogger(__name__)

# After a failed pass, the next one comes this soon (or at the interval, if shorter).
RETRY_SECONDS = 15


class UploadJanitor:
    name = "uploads_cleanup"

    def __init__(self, uploads, database, interval, clock=time.monotonic):
        self._uploads = uploads
        self._database = database
        self._last_error = None
        self._loop = PassLoop("uploads-janitor", self._pass, interval=interval, log=log,
                              failure_message="uploads clean-up failed",
                              retry_after_failure=RETRY_SECONDS, join_timeout=10, clock=clock)

    def start(self):
        if self._loop.started():
            return
        # Before the first request: a client retrying a completion that a crash
        # interrupted gets its file now, not once the dead run's lease runs out.
        try:
            with self._database.connection_context():
                self._uploads.release_abandoned_leases()
        except Exception as exc:  # the lease then simply runs out
            log.error("could not release a previous run's completion leases: %s", exc)
        self._loop.start()

    def stop(self):
        self._loop.stop()

    def health(self):
        if not self._loop.running():
            return False, "not running"
        overdue = self._loop.clock.overdue()
        if overdue:
            return False, overdue
        if self._last_error:
            # Clean-up can wait: a failed pass (e.g. during a database restart) must not
            # take every head out of the load balancer. The next pass comes soon.
            return True, f"degraded: last clean-up failed ({self._last_error}); retrying"
        if self._loop.clock.last is None:
            return True, "starting"
        return True, f"last clean-up {self._loop.clock.ago():.0f}s ago"

    def sweep(self):
        """One pass; returns (expired uploads, files removed by retention, orphans,
        stranded tus uploads finished)."""
        with self._database.connection_context():
            counts = (self._uploads.expire_stale(), self._uploads.apply_retention(),
                      self._uploads.remove_orphans(), self._uploads.finish_stranded_tus())
            self._uploads.prune_hashing()
            return counts

    def _pass(self):
        try:
            self.sweep()
        except Exception as exc:  # the loop logs it; the next pass comes sooner and may succeed
            self._last_error = str(exc) or type(exc).__name__
            raise
        self._last_error = None
