"""The daemon's own exceptions.

Domain code (catalog, uploads, slurm, ...) raises these and knows nothing of
HTTP; ``hpcportal.app`` maps each class to a status code in one place
(``STATUS_BY_ERROR``). Every error carries a machine code and a sentence for
humans, optionally a per-field ``errors`` mapping and extra answer fields.
"""


class PortalError(Exception):
    """Base of every error the daemon answers on purpose."""

    code = "error"

    def __init__(self, message, *, code=None, errors=None, extra=None, headers=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.errors = errors or None
        self.extra = extra or {}
        self.headers = headers or {}

    def to_dict(self):
        body = {"success": False, "error": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class ValidationError(PortalError):
    """The request is malformed or a value is not acceptable (400)."""

    code = "invalid_request"


class AuthenticationError(PortalError):
    """No usable credentials (401). ``msg`` keeps flask_jwt_extended's shape."""

    code = "unauthorized"

    def __init__(self, msg, *, status=401, **kwargs):
        super().__init__(msg, **kwargs)
        self.status = status

    def to_dict(self):
        body = super().to_dict()
        body["msg"] = self.message
        return body


class PermissionDenied(PortalError):
    """Authenticated, but not allowed (403)."""

    code = "forbidden"


class NotFound(PortalError):
    """Unknown, or not visible to this user (404)."""

    code = "not_found"


class Conflict(PortalError):
    """The resource is not in a state that allows this (409)."""

    code = "conflict"


class UnsafePath(Conflict):
    """Something a user planted where the daemon expected its own plain file or
    folder: a symbolic link, a FIFO, a socket, a device, a swapped folder (409)."""

    code = "unsafe_path"


class PayloadTooLarge(PortalError):
    """A body or a declared size beyond a limit (413)."""

    code = "too_large"


class Unprocessable(PortalError):
    """Well-formed but semantically refused, e.g. a checksum mismatch (422)."""

    code = "unprocessable"


class QuotaExceeded(PortalError):
    """A per-user limit is reached (413 for bytes, 429 for counts)."""

    code = "quota_exceeded"


class RateLimited(PortalError):
    """Too many requests (429); ``retry_after`` seconds go in Retry-After."""

    code = "rate_limited"

    def __init__(self, message, *, retry_after=1, **kwargs):
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, int(retry_after))))


class InsufficientStorage(PortalError):
    """The filesystem is full or below its reserve (507)."""

    code = "insufficient_storage"


class ServiceUnavailable(PortalError):
    """A backend (database, Slurm) is down; retrying later may work (503)."""

    code = "unavailable"


class NotSupportedHere(PortalError):
    """This installation cannot do what is asked, e.g. share files on a filesystem
    without POSIX ACLs (501)."""

    code = "not_supported"


class TusVersionUnsupported(PortalError):
    """A tus request without ``Tus-Resumable: 1.0.0`` (412, as tus 1.0.0 says)."""

    code = "unsupported_tus_version"


class TusChecksumMismatch(PortalError):
    """A tus PATCH body that does not match its Upload-Checksum (460, the tus
    checksum extension's status)."""

    code = "checksum_mismatch"


class UnsupportedMediaType(PortalError):
    code = "unsupported_media_type"


class RangeNotSatisfiable(PortalError):
    code = "range_not_satisfiable"


class ConfigError(Exception):
    """The configuration is invalid; the message names the setting."""
