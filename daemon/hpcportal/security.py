"""Browser-facing hardening: CORS, security headers, and start-up checks.

The API is called by the dashboard with a bearer token in the Authorization
header, never with cookies, so a forged cross-site request carries no
credentials. CORS is still off unless ``security.cors_origins`` lists the
origins whose pages may read our answers (the dashboard may be served from
another origin than the daemon). ``Access-Control-Allow-Credentials`` is never
sent: nothing here uses cookies or HTTP authentication, and leaving it out
keeps ``*`` safe to configure.
"""

import os
import re
import stat

from .errors import ConfigError

# Headers a browser may send cross-origin: the token, JSON bodies, conditional
# requests, live output resumption, the tus protocol and tus-js-client's
# request ids (``addRequestId``).
ALLOWED_REQUEST_HEADERS = (
    "Authorization", "Content-Type", "If-None-Match", "If-Match", "Last-Event-ID", "Range",
    "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata", "Upload-Checksum",
    "Upload-Defer-Length", "Upload-Concat", "X-HTTP-Method-Override", "X-Requested-With",
    "X-Request-ID",
)
# Answer headers page scripts may read (beyond the CORS-safelisted ones).
EXPOSED_HEADERS = (
    "ETag", "Location", "Retry-After", "X-Request-ID", "Content-Range", "Content-Disposition",
    "Tus-Resumable", "Tus-Version", "Tus-Max-Size", "Tus-Extension", "Upload-Offset",
    "Upload-Length", "Upload-Expires", "Upload-Metadata", "Upload-Defer-Length", "Upload-File-Id",
    "WWW-Authenticate",
)
ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# Sent on every answer. The API answers JSON, text and event streams, never
# pages: nothing of ours may be framed, sniffed into HTML or run as script.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:]+\](:\d{1,5})?")


def parse_origins(origins):
    """Normalised allowed origins; ConfigError naming the setting for a bad one."""
    allowed = set()
    for origin in origins:
        origin = origin.strip().rstrip("/")
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"security.cors_origins: {origin!r} is not an origin such as "
                "https://dashboard.example.org or http://host:3000 (no path), or *")
        allowed.add(origin.lower())
    return frozenset(allowed)


class SecurityMiddleware:
    """CORS (preflight and actual requests) and the security headers."""

    def __init__(self, config):
        self._origins = parse_origins(config.security.cors_origins)
        self._max_age = str(int(config.security.cors_max_age))

    def _allowed(self, origin):
        if not origin or not self._origins:
            return None
        if "*" in self._origins:
            return "*"
        return origin if origin.lower() in self._origins else None

    def process_request(self, req, resp):
        origin = req.get_header("Origin")
        requested_method = req.get_header("Access-Control-Request-Method")
        if req.method != "OPTIONS" or not origin or not requested_method:
            return
        # A preflight: answered here, before authentication and routing.
        allowed = self._allowed(origin)
        resp.status = 204
        resp.complete = True
        if not allowed or requested_method.upper() not in ALLOWED_METHODS:
            return  # no CORS headers: the browser refuses the real request
        resp.set_header("Access-Control-Allow-Origin", allowed)
        resp.set_header("Access-Control-Allow-Methods", ", ".join(ALLOWED_METHODS))
        resp.set_header("Access-Control-Allow-Headers", ", ".join(ALLOWED_REQUEST_HEADERS))
        resp.set_header("Access-Control-Max-Age", self._max_age)

    def process_response(self, req, resp, resource, req_succeeded):
        for name, value in SECURITY_HEADERS.items():
            resp.set_header(name, value)
        if req.path.startswith("/api/") and resp.get_header("Cache-Control") is None:
            # Answers about a user's files and jobs must not sit in shared caches;
            # resources that may be cached (catalog lists) set their own policy.
            resp.set_header("Cache-Control", "no-store")
        if self._origins:
            resp.append_header("Vary", "Origin")
            origin = req.get_header("Origin")
            allowed = self._allowed(origin)
            if allowed and resp.get_header("Access-Control-Allow-Origin") is None:
                resp.set_header("Access-Control-Allow-Origin", allowed)
                resp.set_header("Access-Control-Expose-Headers", ", ".join(EXPOSED_HEADERS))


def check_key_files(config, euid=None):
    """Refuse key material others could read (the HMAC secret) or replace (any key).

    Anyone who reads the shared secret, or swaps the public key for their own,
    can mint tokens for every user. ConfigError with one line naming the setting."""
    euid = os.geteuid() if euid is None else euid
    _check_key_file("auth.secret_file", config.auth.secret_file, 0o077, euid)
    for setting in ("public_key_file", "jwks_file"):
        _check_key_file(f"auth.{setting}", getattr(config.auth, setting), 0o022, euid)
    if slurm_key_in_use(config):
        # Slurm's JWT key signs tokens for any Slurm user, root included.
        _check_key_file("slurm.jwt_key_file", config.slurm.jwt_key_file, 0o077, euid)


def slurm_key_in_use(config):
    """Whether the REST backend may be used: asked for, or ``auto`` with slurmrestd's address
    set and the key file present (a missing key file makes ``auto`` use the commands)."""
    settings = config.slurm
    if settings.backend == "rest":
        return True
    return (settings.backend == "auto" and bool(settings.rest_url)
            and os.path.lexists(settings.jwt_key_file))


def _check_key_file(setting, path, forbidden, euid):
    if not path:
        return
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & forbidden:
        who = "accessible" if forbidden == 0o077 else "writable"
        fix = "chmod 600" if forbidden == 0o077 else "chmod go-w"
        raise ConfigError(
            f"{setting}: {path} is {who} by group or others (mode {mode:04o}); "
            f"anyone who {'reads' if forbidden == 0o077 else 'changes'} it can forge tokens: "
            f"{fix} {path}")
    if info.st_uid not in (0, euid):
        raise ConfigError(
            f"{setting}: {path} belongs to uid {info.st_uid}, who could replace it; "
            "it must belong to root or to the daemon's user")
