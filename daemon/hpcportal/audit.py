"""The audit trail: one record per state-changing call.

Each record is a line in the ``hpcportal.audit`` log before the answer leaves
(journald keeps it), and a row in ``audit_record`` written behind the request:
a background thread stores what queued up in one transaction. A synchronous
insert cost every state-changing call a commit of its own, a disk flush with
SQLite's ``synchronous=FULL`` (about a millisecond, an eighth of a whole job
submission), and took the write lock once more per request. The writer looks
for records every ``FLUSH_SECONDS`` rather than waking for each: woken by the
request that queued the record, it took the interpreter from that request while
its answer was still to be sent (bench/RESULTS.md). The price is that the table
lags the log by up to that long, and a killed daemon's last records are in the
log only.
"""

import logging
import queue
import threading
import time

import peewee

from .models.audit import AuditRecord
from .passes import PassClock

audit_log = logging.getLogger("hpcportal.audit")
log = logging.getLogger(__name__)

# Rows per transaction, and how many may wait before new ones go to the log only.
BATCH = 500
BACKLOG = 20000
# The writer keeps its database connection while records keep coming, and lets
# it go after this long without any. Opening one per batch (SQLite: five
# pragmas, and a close) cost 3 ms against 0.9 ms for the insert itself, taken
# from the requests running meanwhile on a small head.
IDLE_SECONDS = 1.0
# How often the writer stores what has queued up.
FLUSH_SECONDS = 0.25


class AuditTrail:
    name = "audit"

    def __init__(self, database, batch=BATCH, backlog=BACKLOG, idle_seconds=IDLE_SECONDS,
                 flush_seconds=FLUSH_SECONDS):
        self._database = database
        self._batch = batch
        self._idle_seconds = idle_seconds
        self._flush_seconds = flush_seconds
        self._queue = queue.Queue(backlog)
        self._thread = None
        self._stop = threading.Event()
        self._last_error = None
        self._dropped = 0
        # Each turn of the loop is a pass (it waits idle_seconds at most); a batch may wait for
        # a pooled connection and a connect first.
        self._passes = PassClock(idle_seconds, margin=30)

    def record(self, record):
        """Log ``record`` now; store it soon (at once when the writer is not running)."""
        audit_log.info("audit %s", record)
        row = {**record, "target": None if record.get("target") is None else str(record["target"])[:255]}
        if self._thread is None:
            self._store([row])
            return
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("audit backlog full (%d records waiting): %d records kept in the audit "
                          "log only so far", self._queue.qsize(), self._dropped)

    def start(self):
        if self._thread is not None:
            return
        self._stop.clear()
        self._passes.start()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def stop(self):
        """Stores what is still queued; called after the last request is answered."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(30)
        self._drain_all()

    def flush(self):
        """Waits until every record queued so far is stored (or given up on)."""
        self._queue.join()

    def health(self):
        if self._thread is None or not self._thread.is_alive():
            return False, "not running"
        waiting = self._queue.qsize()
        overdue = self._passes.overdue()
        if overdue:
            return False, f"{overdue}; {waiting} records waiting"
        if self._last_error:
            # The records are in the audit log; a failing table must not take the head out.
            return True, f"degraded: storing audit records failed ({self._last_error}); {waiting} waiting"
        return True, f"{waiting} records waiting"

    def _run(self):
        last_record = time.monotonic()
        try:
            while not self._stop.wait(self._flush_seconds):
                self._passes.finished()
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    if (time.monotonic() - last_record >= self._idle_seconds
                            and not self._database.is_closed()):
                        self._disconnect()
                    continue
                self._write_batch([first])
                while not self._queue.empty():
                    self._write_batch([self._queue.get_nowait()])
                last_record = time.monotonic()
        finally:
            self._disconnect()

    def _disconnect(self):
        """Lets this thread's connection go (back to the pool, for a server database)."""
        try:
            self._database.close()
        except Exception as exc:  # a broken connection: nothing to keep either way
            log.debug("closing the audit writer's connection: %s", exc)

    def _drain_all(self):
        """On the stopping thread: leaves its connection as it found it."""
        had_connection = not self._database.is_closed()
        try:
            while True:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return
                self._write_batch([first])
        finally:
            if not had_connection:
                self._disconnect()

    def _write_batch(self, rows):
        while len(rows) < self._batch:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        try:
            self._store(rows, connect=True)
        finally:
            for _ in rows:
                self._queue.task_done()

    def _store(self, rows, connect=False):
        """``connect``: on the writer thread, which opens its connection when it has none."""
        try:
            if connect:
                self._database.connect(reuse_if_open=True)
            with self._database.atomic():
                AuditRecord.insert_many(rows).execute()
            self._last_error = None
        except peewee.PeeweeException as exc:
            if connect:
                self._disconnect()  # the next batch starts on a fresh connection
            self._last_error = str(exc) or type(exc).__name__
            # Each record is in the audit log already; a locked or unreachable
            # database is reported by the requests' own answers.
            log.error("could not store %d audit records (kept in the audit log only): %s",
                      len(rows), exc)
