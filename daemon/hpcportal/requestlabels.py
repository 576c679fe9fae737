"""What of a request may become a metrics label or a log value.

Clients choose methods, paths and headers freely. Every distinct label value
is a new time series kept for the life of the process, so labels come from
fixed sets: the methods we serve (anything else is ``other``) and the route
templates we registered (anything else is ``unmatched``). Text that goes into
log lines is cut to a bound and has its control characters escaped, so one
request can neither flood the journal nor forge a line of its own.
"""

import logging

KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"
# Characters of one client-chosen value in a log line or an audit record.
MAX_LOGGED = 200


def method_label(method):
    return method if method in KNOWN_METHODS else OTHER_METHOD


def route_label(uri_template):
    """The matched route's template (a fixed set), or one label for every unknown path."""
    return uri_template or UNMATCHED_ROUTE


def loggable(value, limit=MAX_LOGGED):
    """``value`` as printable text of at most ``limit`` characters plus a note of the cut."""
    if value is None:
        return "-"
    text = str(value)
    shown = text[:limit]
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in shown)
    if len(text) > limit or len(shown) > limit:
        return f"{shown[:limit]}...({len(text)} chars)"
    return shown


class BoundedLogValues(logging.Filter):
    """Cuts and escapes what a library logs: waitress puts request paths, as
    the client sent them, into its messages (formatted in already, or as args)."""

    def __init__(self, limit=MAX_LOGGED):
        super().__init__()
        self._limit = limit

    def filter(self, record):
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(loggable(a, self._limit) if isinstance(a, str) else a for a in record.args)
        elif not record.args and isinstance(record.msg, str):
            record.msg = loggable(record.msg, self._limit * 2)
        return True
