"""Waiting for asynchronous effects with a generous bound (tests assert behaviour, not timings)."""

import time


def wait_for(check, timeout=60, interval=0.2, message="condition"):
    """Poll until ``check()`` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message} (last: {last!r})")
