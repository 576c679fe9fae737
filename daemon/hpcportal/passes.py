"""When a background service last finished a pass, and whether that is too long ago.

Each looping service (the uploads clean-up, the job monitor, the catalog
indexer, the audit writer) marks every pass it finishes, failed or not. One
that has finished none for longer than it should is stuck in a call that does
not return (a hung filesystem, a lock that is never released), and its /readyz
check says so: a stuck clean-up pass would otherwise leave /readyz answering
ok while nothing expires any more.
"""

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
