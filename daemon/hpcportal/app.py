"""The WSGI app: ``create_app(config)`` puts HTTP in front of the portal's parts.

Nothing here runs at import time. ``create_app`` has ``portal.build_portal``
make every part, then adds the middleware, hands each resource the parts it
needs and maps our exceptions to HTTP in one place.
"""

import logging
import time
import uuid

import falcon
import peewee
from prometheus_client import Counter, Histogram

from . import errors
from .portal import Portal, build_portal
from .requestlabels import loggable, method_label, route_label
from .oversize import OversizedBodyMiddleware
from .resources import (file_shares, health, images, insight, jobs, me, notifications, template_sharing,
                        templates, uploads)
from .security import SecurityMiddleware

log = logging.getLogger("hpcportal")
access_log = logging.getLogger("hpcportal.access")

# The one place where our exceptions become HTTP statuses.
STATUS_BY_ERROR = {
    errors.ValidationError: 400,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.RangeNotSatisfiable: 416,
    errors.Unprocessable: 422,
    errors.RateLimited: 429,
    errors.QuotaExceeded: 413,
    errors.ServiceUnavailable: 503,
    errors.NotSupportedHere: 501,
    errors.InsufficientStorage: 507,
    errors.TusVersionUnsupported: 412,
    errors.TusChecksumMismatch: 460,
}
# Statuses of protocols we speak that HTTP itself does not name.
REASONS = {460: "460 Checksum Mismatch"}

# Calls that change nothing; every other method is audited.
READ_ONLY_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_API_PATHS = {"/api/openapi.json"}


def status_of(exc):
    if isinstance(exc, errors.AuthenticationError):
        return exc.status
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def _http_status(code):
    return REASONS.get(code) or falcon.code_to_http_status(code)


class RequestContextMiddleware:
    """Request id, database connection, access log line, metrics and audit."""

    def __init__(self, portal):
        self._portal = portal
        self._requests = Counter(
            "hpcportal_http_requests", "HTTP requests by route and status",
            ["method", "route", "status"], registry=portal.registry)
        self._latency = Histogram(
            "hpcportal_http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route"], registry=portal.registry,
            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))

    def process_request(self, req, resp):
        req.context.request_id = uuid.uuid4().hex[:16]
        req.context.started = time.monotonic()
        req.context.user = None
        req.context.audit_target = None
        req.context.audit_detail = None
        req.context.max_json_body = self._portal.config.server.max_json_body
        resp.set_header("X-Request-ID", req.context.request_id)

    def process_response(self, req, resp, resource, req_succeeded):
        duration = time.monotonic() - getattr(req.context, "started", time.monotonic())
        # Labels and logged values from fixed sets or cut to a bound: clients choose them.
        method, route = method_label(req.method), route_label(req.uri_template)
        status = resp.status if isinstance(resp.status, int) else int(str(resp.status).split()[0])
        user = req.context.user.name if getattr(req.context, "user", None) else "-"
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route).observe(duration)
        access_log.info("%s %s %s %.1fms user=%s rid=%s", loggable(req.method, 16), route, status,
                        duration * 1000, user, getattr(req.context, "request_id", "-"))
        if req.method not in READ_ONLY_METHODS and req.path.startswith("/api/"):
            self._audit(req, f"{loggable(req.method, 16)} {route}", status, user)
        database = self._portal.database
        if not isinstance(database, peewee.SqliteDatabase) and not database.is_closed():
            database.close()  # back to the pool; SQLite keeps one per worker thread

    def _audit(self, req, action, status, user):
        outcome = "ok" if status < 400 else ("denied" if status in (401, 403) else "failed")
        record = {
            "user": None if user == "-" else user,
            "client": client_address(req, self._portal.config.server.trusted_proxies),
            "action": action,
            "target": loggable(req.context.audit_target or req.path),
            "outcome": outcome,
            "status": status,
            "request_id": req.context.request_id,
            "detail": req.context.audit_detail,
        }
        self._portal.audit.record(record)


def client_address(req, trusted_proxies):
    if req.remote_addr in trusted_proxies:
        forwarded = req.get_header("X-Forwarded-For")
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
    return req.remote_addr


class AuthMiddleware:
    """Every /api/ route needs a valid bearer token, except the API document."""

    def __init__(self, authenticator):
        self._authenticator = authenticator

    def process_request(self, req, resp):
        if not req.path.startswith("/api/") or req.path in PUBLIC_API_PATHS:
            return
        if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method"):
            return  # CORS preflight carries no credentials by design
        header = req.get_header("Authorization")
        if header is None and req.path == notifications.EVENTS_PATH and req.get_param("access_token"):
            # A browser's EventSource cannot send headers: the stream alone takes the token in
            # the query, and any refusal of it is a 401, as for a request without a header.
            try:
                req.context.user = self._authenticator.authenticate(f"Bearer {req.get_param('access_token')}")
            except errors.AuthenticationError as exc:
                raise errors.AuthenticationError(exc.message, code=exc.code) from None
            return
        req.context.user = self._authenticator.authenticate(header)


def _serialize_http_error(req, resp, exc):
    code = exc.status_code if hasattr(exc, "status_code") else int(str(exc.status).split()[0])
    message = exc.description or exc.title or "Error"
    if code == 404 and not exc.description:
        message = f"There is no resource at {loggable(req.path)}."
    elif code == 405 and not exc.description:
        message = f"Method {loggable(req.method, 16)} is not allowed on {loggable(req.path)}."
    body = {"success": False, "error": _HTTP_CODES.get(code, "http_error"), "message": message}
    resp.media = body
    resp.content_type = falcon.MEDIA_JSON


_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
               411: "length_required", 413: "too_large", 415: "unsupported_media_type"}


def _add_error_handlers(app):
    def handle_portal_error(req, resp, exc, params):
        code = status_of(exc)
        resp.status = _http_status(code)
        resp.media = exc.to_dict()
        for name, value in exc.headers.items():
            resp.set_header(name, value)
        if code == 401:
            resp.set_header("WWW-Authenticate", "Bearer")
        if exc.code == errors.UnsafePath.code:  # a file a user planted: one line, no traceback
            user = getattr(req.context, "user", None)
            log.warning("refused rid=%s user=%s: %s", getattr(req.context, "request_id", "-"),
                        user.name if user else "-", exc.message)

    def handle_database_error(req, resp, exc, params):
        log.error("database error rid=%s: %s", getattr(req.context, "request_id", "-"), exc)
        handle_portal_error(req, resp, errors.ServiceUnavailable(
            "The portal database is not available right now; please retry shortly.",
            code="database_unavailable", headers={"Retry-After": "5"}), params)

    def handle_unexpected(req, resp, exc, params):
        if isinstance(exc, (falcon.HTTPError, falcon.HTTPStatus)):
            raise exc
        request_id = getattr(req.context, "request_id", "-")
        log.exception("unexpected error rid=%s on %s %s", request_id, loggable(req.method, 16),
                      loggable(req.path))
        resp.status = falcon.HTTP_500
        resp.media = {"success": False, "error": "internal_error", "request_id": request_id,
                      "message": f"An unexpected error occurred (request id {request_id})."}

    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler((peewee.OperationalError, peewee.InterfaceError), handle_database_error)
    app.add_error_handler(errors.PortalError, handle_portal_error)
    app.set_error_serializer(_serialize_http_error)


class PortalApp(falcon.App):
    """falcon.App with a ``portal`` attribute (falcon.App itself uses __slots__)."""


def create_app(config, clock=time.time):
    """The WSGI app for ``config``; ``app.portal`` holds its parts."""
    return build_app(build_portal(config, clock=clock))


def build_app(portal: Portal):
    """The WSGI app in front of ``portal``'s parts."""
    config = portal.config
    app = PortalApp(middleware=[RequestContextMiddleware(portal), SecurityMiddleware(config),
                                OversizedBodyMiddleware(config.uploads.max_chunk_size),
                                AuthMiddleware(portal.authenticator),
                                notifications.RememberEmail(portal.notifications.preferences)])
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_form_urlencoded = False
    _add_error_handlers(app)
    app.portal = portal

    health.add_routes(app, database=portal.database, authenticator=portal.authenticator,
                      services=portal.services, registry=portal.registry)
    me.add_routes(app)
    images.add_routes(app, catalog=portal.images, indexer=portal.indexer,
                      rate_limits=portal.rate_limits)
    templates.add_routes(app, catalog=portal.templates, mine=portal.my_templates,
                         indexer=portal.indexer, rate_limits=portal.rate_limits, config=config)
    uploads.add_routes(app, uploads=portal.uploads, rate_limits=portal.rate_limits)
    file_shares.add_routes(app, uploads=portal.uploads)
    jobs.add_routes(app, service=portal.jobs, output=portal.job_output, files=portal.job_files,
                    rate_limits=portal.rate_limits, max_json_body=config.server.max_json_body,
                    max_script_size=config.slurm.max_script_size)
    insight.add_routes(app, graph=portal.job_graph, usage=portal.job_usage)
    template_sharing.add_routes(app, job_templates=portal.job_templates, proposals=portal.proposals)
    notifications.add_routes(app, notifications=portal.notifications)
    return app
