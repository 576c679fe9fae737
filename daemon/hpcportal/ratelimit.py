"""Per-user rate limits on expensive calls (submit, upload init, scan).

Resources are given the one ``RateLimits`` of the portal and call
``rate_limits.check(user, "submit")`` before doing the work; over the limit it
raises ``errors.RateLimited`` (429 with Retry-After).

Each (user, action) has a token bucket holding ``limit`` tokens that refills
at ``limit`` per minute, so a scripted burst of up to ``limit`` calls passes at
once and a steady rate of ``limit`` per minute passes for ever. Buckets live
in this process's memory: with several heads behind a load balancer a user may
get up to ``limit`` per minute on each head, and a restart forgets them. That
is acceptable for what the limits are for (keeping one runaway script from
starving Slurm or the disks), and needs no shared state.
"""

import math
import threading
import time
from types import MappingProxyType

from .errors import RateLimited

DEFAULT_LIMITS = MappingProxyType({"submit": 120, "upload_init": 300, "scan": 30})
# Buckets untouched this long are full again and can be forgotten.
_FORGET_AFTER = 120.0

_WHAT = {"submit": "job submissions", "upload_init": "new uploads", "scan": "rescans"}


def parse_rate_limits(value):
    """``{submit: 120, scan: 0}`` -> a mapping with every default action filled in."""
    if isinstance(value, str):
        import json
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of actions to calls per minute")
    limits = dict(DEFAULT_LIMITS)
    for action, limit in value.items():
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
            raise ValueError(f"{action}: expected a number of calls per minute (0 disables)")
        limits[str(action)] = limit
    return MappingProxyType(limits)


class RateLimits:
    """Token buckets per (user, action); thread-safe, in memory."""

    def __init__(self, limits, clock=time.monotonic):
        self._limits = dict(limits)
        self._clock = clock
        self._buckets = {}
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def limit(self, action):
        return self._limits.get(action, 0)

    def check(self, user, action):
        """Take one call from the user's budget for ``action``, or raise RateLimited."""
        limit = self.limit(action)
        if not limit:
            return
        name = getattr(user, "name", user)
        rate = limit / 60.0
        now = self._clock()
        with self._lock:
            self._sweep(now)
            tokens, seen = self._buckets.get((name, action), (float(limit), now))
            tokens = min(float(limit), tokens + (now - seen) * rate)
            if tokens < 1.0:
                self._buckets[(name, action)] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / rate))
                raise RateLimited(
                    f"Too many {_WHAT.get(action, action)}: at most {limit:g} per minute per user. "
                    f"Please retry in {wait} s.", retry_after=wait,
                    extra={"limit_per_minute": limit})
            self._buckets[(name, action)] = (tokens - 1.0, now)

    def _sweep(self, now):
        if now - self._last_sweep < _FORGET_AFTER:
            return
        self._last_sweep = now
        stale = [key for key, (_, seen) in self._buckets.items() if now - seen > _FORGET_AFTER]
        for key in stale:
            del self._buckets[key]
