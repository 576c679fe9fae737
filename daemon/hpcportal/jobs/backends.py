"""Which Slurm backend serves the next call: slurmrestd or the commands.

``slurm.backend`` decides: ``rest`` and ``cli`` always use theirs; ``auto`` uses
slurmrestd when it is configured and answers, checked at start and again every
pass (a background service, so /readyz tells a stuck check). A call takes the
backend once, at its start, and keeps it to its end: a switch never happens in
the middle of a submission.
"""

import logging

from ..passes import PassLoop
from ..slurm.runner import SlurmUnavailable

log = logging.getLogger("hpcportal.slurm")


class BackendChoice:
    name = "slurm"

    def __init__(self, mode, commands, rest=None, *, reason, interval, margin=10.0):
        """``reason``: why the configured choice is what it is (no secrets, no paths)."""
        self._mode = mode
        self._commands = commands
        self._rest = rest
        self._current = rest if mode == "rest" else commands
        self._reason = reason
        # start() checks at once, on the caller's thread: the loop's first check comes an interval later.
        self._loop = PassLoop("slurm-backend", self.check, interval=interval, margin=margin, log=log,
                              failure_message="checking slurmrestd failed", wait_first=True, join_timeout=2)

    def current(self):
        return self._current

    def check(self):
        """Ask slurmrestd whether it answers; under ``auto`` the answer picks the backend."""
        if self._rest is None:
            return
        try:
            self._rest.ping()
            chosen, reason = self._rest, f"slurmrestd answers (REST API {self._rest.version})"
        except SlurmUnavailable as exc:
            chosen, reason = self._commands, f"slurmrestd does not answer: {exc.message}"
        if self._mode == "rest":
            chosen, reason = self._rest, f"slurm.backend is rest; {reason}"
        elif self._mode == "auto":
            reason = f"slurm.backend is auto; {reason}"
        if chosen is not self._current or reason != self._reason:
            log.info("Slurm backend: %s (%s)", chosen.name, reason)
        self._current, self._reason = chosen, reason

    def start(self):
        self.check()
        log.info("Slurm backend: %s (%s)", self._current.name, self._reason)
        if self._rest is not None:
            self._loop.start()

    def stop(self):
        self._loop.stop()

    def health(self):
        return self._loop.health(f"{self._current.name}: {self._reason}")

    def public_health(self):
        """What anyone may know: the backend's name (the reason may name hosts)."""
        return {"backend": self._current.name}
