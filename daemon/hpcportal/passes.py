"""How a background service runs its passes, and whether the last one is too long ago.

Each looping service (the uploads clean-up, the job monitor, the catalog
indexer, the audit writer) marks every pass it finishes, failed or not. One
that has finished none for longer than it should is stuck in a call that does
not return (a hung filesystem, a lock that is never released), and its /readyz
check says so: a stuck clean-up pass would otherwise leave /readyz answering
ok while nothing expires any more.

``PassLoop`` is the thread those with a plain "a pass, then wait" loop share;
the service gives it the pass and keeps what the pass means (its errors, its
health detail) to itself.
"""

import threading
import time

# A pass is overdue once this many intervals and the service's margin have
# gone by without one: a slow pass or two is normal, three missed ones are not.
INTERVALS = 3
MARGIN = 10.0


class PassClock:
    def __init__(self, interval, margin=MARGIN, clock=time.monotonic):
        self.expected = INTERVALS * interval + margin
        self._clock = clock
        self._since = None
        self.last = None

    def start(self):
        """The service starts: its first pass is due within the expected time too."""
        self._since = self._clock()
        self.last = None

    def finished(self):
        self.last = self._since = self._clock()

    def ago(self):
        """Seconds since the last finished pass, or None before the first."""
        return None if self.last is None else self._clock() - self.last

    def overdue(self):
        """None while passes come in time (or the service was never started);
        else the check's detail, saying how long none has finished."""
        if self._since is None:
            return None
        waited = self._clock() - self._since
        if waited <= self.expected:
            return None
        what = "no pass finished since start" if self.last is None else "no pass finished"
        return f"stale: {what} for {waited:.0f}s (expected within {self.expected:.0f}s)"



class PassLoop:
    """Runs ``run_pass`` on a thread of its own every ``interval`` seconds until stopped.

    A pass that raises is logged (``log.exception(failure_message)``) and the loop
    goes on; the service's expected failures are for ``run_pass`` to catch and
    remember. Every pass, failed or not, is marked on ``clock`` (a ``PassClock``).
    Setting ``wake`` starts the next pass at once.
    """

    def __init__(self, name, run_pass, *, interval, log, failure_message, margin=MARGIN,
                 wait_first=False, retry_after_failure=None, join_timeout=2, clock=time.monotonic):
        """``name``: the thread's. ``wait_first``: the first pass comes after an interval,
        not at start. ``retry_after_failure``: after a pass that raised, the next one comes
        this soon (or at the interval, if shorter). ``join_timeout``: how long ``stop`` waits
        for a pass in flight (a hung call must not hold up a stop)."""
        self._name = name
        self._run_pass = run_pass
        self._interval = interval
        self._log = log
        self._failure_message = failure_message
        self._wait_first = wait_first
        self._retry_after_failure = retry_after_failure
        self._join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread = None
        self.clock = PassClock(interval, margin, clock=clock)
        self.wake = threading.Event()

    def start(self):
        if self._thread is not None:
            return
        self._stop.clear()
        self.wake.clear()
        self.clock.start()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self.wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self._join_timeout)

    def started(self):
        """Started and not stopped since."""
        return self._thread is not None

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def stopping(self):
        """For a long pass: whether to leave off early."""
        return self._stop.is_set()

    def health(self, detail, error=None):
        """The common check: not ready while a pass is overdue, degraded while ``error``
        (the service's last failure) stands, else ``detail``."""
        overdue = self.clock.overdue()
        if overdue:
            return False, overdue
        if error:
            return True, f"degraded: {error}"
        return True, detail

    def _loop(self):
        wait = self._interval if self._wait_first else 0
        while True:
            self.wake.wait(wait)
            if self._stop.is_set():
                return
            # Cleared before the pass: a wake set while it runs brings the next one at once.
            self.wake.clear()
            wait = self._interval
            try:
                self._run_pass()
            except Exception:  # keep looping whatever one pass did
                self._log.exception(self._failure_message)
                if self._retry_after_failure is not None:
                    wait = min(self._interval, self._retry_after_failure)
            self.clock.finished()
