"""Operations endpoints: liveness, readiness, metrics, the API document."""

import peewee
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import openapi
from ..errors import PortalError


class LivenessResource:
    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class ReadinessResource:
    """Ready or not, per check. The details name folders, hosts and commands of
    this head, so only an administrator's token gets them; probes and everyone
    else see which check fails, not why."""

    def __init__(self, database, authenticator, services):
        self._database = database
        self._authenticator = authenticator
        self._services = services

    def on_get(self, req, resp):
        checks = {"database": self._database_check()}
        for service in self._services:
            ok, detail = service.health()
            public = service.public_health() if hasattr(service, "public_health") else {}
            checks[getattr(service, "name", type(service).__name__)] = {"ok": ok, **public, "detail": detail}
        ready = all(check["ok"] for check in checks.values())
        if not self._admin(req.get_header("Authorization")):
            checks = {name: {k: v for k, v in check.items() if k != "detail"} for name, check in checks.items()}
        resp.status = 200 if ready else 503
        resp.media = {"ready": ready, "checks": checks}

    def _admin(self, header):
        if header is None:
            return False
        try:
            return self._authenticator.authenticate(header).admin
        except PortalError:
            return False  # a probe with a stale token still gets its answer

    def _database_check(self):
        try:
            self._database.execute_sql("SELECT 1").fetchone()
            return {"ok": True, "detail": "reachable"}
        except peewee.PeeweeException as exc:
            return {"ok": False, "detail": f"not reachable: {exc}"}


class MetricsResource:
    def __init__(self, registry):
        self._registry = registry

    def on_get(self, req, resp):
        resp.data = generate_latest(self._registry)
        resp.content_type = CONTENT_TYPE_LATEST


class OpenAPIResource:
    def __init__(self):
        self._document = None

    def on_get(self, req, resp):
        if self._document is None:
            self._document = openapi.document()
        resp.media = self._document


def add_routes(app, *, database, authenticator, services, registry):
    app.add_route("/healthz", LivenessResource())
    app.add_route("/readyz", ReadinessResource(database, authenticator, services))
    app.add_route("/metrics", MetricsResource(registry))
    app.add_route("/api/openapi.json", OpenAPIResource())
