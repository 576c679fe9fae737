"""Waiting for asynchronous effects with a generous bound (tests assert behaviour, not timings).

``wait_for`` is the one waiting loop of the test suite: no test keeps a deadline
of its own.
"""

import time


def wait_for(check, timeout=60, interval=0.2, message="condition", show=None):
    """Poll until ``check()`` returns something truthy; return it.

    On timeout, AssertionError naming ``message`` and the last value, or what
    ``show()`` returns then (say, the rows a test waited to change)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    seen = show() if show is not None else last
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {seen!r})")
