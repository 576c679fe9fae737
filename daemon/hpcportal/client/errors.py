"""The one exception the client raises: what the portal (or the network) said, in one line."""


class ClientError(Exception):
    """A call that did not succeed. ``status`` is the HTTP status (None when no answer
    came), ``code`` the portal's error code (``unreachable``, ``bad_token``, ``not_found``,
    ...) and ``message`` a sentence for people; ``details`` the answer's ``errors`` by field."""

    def __init__(self, message, *, status=None, code=None, details=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or "error"
        self.details = details or {}

    def __str__(self):
        return self.message


# flask_jwt_extended answers 401 for a missing token and 422 for one it cannot
# read; the portal keeps both (with ``msg``), so both mean "your token".
_TOKEN_STATUSES = (401, 422)
_TOKEN_CODES = {"unauthorized", "invalid_token", "missing_token", "token_expired"}


def from_response(response):
    """The ClientError for a failed ``requests`` answer, worded for the person at the terminal."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    status = response.status_code
    code = body.get("error")
    message = body.get("message") or body.get("msg")
    if not message:
        text = " ".join((response.text or "").split())[:200]
        message = text or response.reason or "no explanation given"
    details = body.get("errors") if isinstance(body.get("errors"), dict) else {}
    # The message names the first bad field; the others follow it, so one line says all.
    others = [f"{field}: {reason}" for field, reason in details.items() if str(reason) not in message]
    if others:
        message = f"{message.rstrip('.')}; {'; '.join(others)}"
    if status == 401 or (status in _TOKEN_STATUSES and (code in _TOKEN_CODES or "msg" in body)):
        return ClientError(f"the portal refused the token ({message}); get a new one from the Auth Portal",
                           status=status, code="bad_token", details=details)
    return ClientError(f"{message} (HTTP {status})", status=status, code=code or _generic(status),
                       details=details)


def _generic(status):
    return {400: "invalid_request", 403: "forbidden", 404: "not_found", 409: "conflict",
            413: "too_large", 429: "too_many_requests"}.get(status, "server_error" if status >= 500 else "error")


def unreachable(url, exc):
    """The ClientError for a request that got no HTTP answer at all."""
    reason = exc.__class__.__name__
    text = str(exc)
    if "Connection refused" in text:
        reason = "connection refused"
    elif "Name or service not known" in text or "nodename nor servname" in text:
        reason = "unknown host name"
    elif "timed out" in text.lower():
        reason = "timed out"
    return ClientError(f"cannot reach the portal at {url} ({reason}); is the URL right and the daemon running?",
                       code="unreachable")
