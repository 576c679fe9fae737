"""Errors, operations endpoints and the API document, against real daemons
(and, where a route must misbehave on purpose, an in-process app)."""

import dataclasses
import json
import os
import re
import socket
import sqlite3
import time

import falcon
import falcon.inspect
import falcon.testing
import pytest
import requests

from hpcportal import db as dbmod
from hpcportal.app import build_app, create_app
from hpcportal.audit import AuditTrail
from hpcportal.config import Config
from hpcportal.models.audit import AuditRecord
from hpcportal.openapi import document
from hpcportal.portal import build_portal
from hpcportal.resources.base import read_json
from support.daemon import TEST_SECRET, auth_headers
from support.waiting import wait_for

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch"}


def test_unknown_route_is_json_404(daemon):
    answer = daemon.get("/api/v2/nothing-here", user="alice")
    assert answer.status_code == 404
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"success": False, "error": "not_found",
                             "message": "There is no resource at /api/v2/nothing-here."}


def test_wrong_method_is_json_405(daemon):
    answer = daemon.request("PUT", "/api/v2/me", user="alice")
    assert answer.status_code == 405
    assert answer.json()["error"] == "method_not_allowed"
    assert "PUT" in answer.json()["message"]


def audit_rows(daemon):
    with sqlite3.connect(f"{daemon.shared.state}/portal.db") as conn:
        return conn.execute("SELECT user, action, outcome, status, client, request_id"
                            " FROM audit_record ORDER BY id").fetchall()


@pytest.mark.databases("sqlite")  # reads/breaks the SQLite file itself
def test_state_changing_calls_are_audited(daemon):
    answer = daemon.request("DELETE", "/api/v2/me", user="alice")
    # Logged before the answer leaves; stored in the table just behind it.
    assert f"'request_id': '{answer.headers['X-Request-ID']}'" in daemon.logs()
    rows = wait_for(lambda: audit_rows(daemon), message="the audit row")
    assert rows == [("alice", "DELETE /api/v2/me", "failed", 405, "127.0.0.1",
                     answer.headers["X-Request-ID"])]


@pytest.mark.databases("sqlite")
def test_a_stopping_daemon_stores_every_audit_record_it_logged(daemon):
    with requests.Session() as session:  # one connection, not 300 held open
        request_ids = [session.post(f"{daemon.url}/api/v2/nothing-{n}", headers=auth_headers("alice"),
                                    timeout=30).headers["X-Request-ID"] for n in range(300)]
    assert daemon.stop() == 0
    assert [row[5] for row in audit_rows(daemon)] == request_ids


def test_healthz_and_readyz(daemon):
    assert daemon.get("/healthz").json() == {"status": "ok"}
    ready = daemon.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["checks"]["database"]["ok"] is True


@pytest.mark.databases("sqlite")  # reads/breaks the SQLite file itself
def test_unopenable_database_fails_start_with_one_line(daemon_factory, shared_dir):
    os.mkdir(f"{shared_dir.state}/portal.db")  # a folder where the SQLite file should be
    daemon = daemon_factory(start=False)
    daemon.start(wait=False)
    daemon.proc.wait(30)
    assert daemon.proc.returncode == 2
    assert "database error" in daemon.logs() and "Traceback" not in daemon.logs()


class _StuckService:
    name = "watcher"

    def health(self):
        return False, "images folder is missing"


@pytest.mark.unit  # in process
def test_readyz_is_503_and_says_why_when_a_service_is_down(tmp_path, users):
    portal = build_portal(_config(tmp_path))
    app = build_app(dataclasses.replace(portal, services=portal.services + (_StuckService(),)))
    client = falcon.testing.TestClient(app)
    answer = client.simulate_get("/readyz", headers=auth_headers("alice", admin=True))
    assert answer.status_code == 503
    assert answer.json["checks"]["watcher"] == {"ok": False, "detail": "images folder is missing"}
    # Without an administrator's token (a stale one included): which check fails, not why.
    for headers in ({}, auth_headers("alice"), {"Authorization": "Bearer not.a.token"}):
        answer = client.simulate_get("/readyz", headers=headers)
        assert answer.status_code == 503 and answer.json["checks"]["watcher"] == {"ok": False}


def test_metrics_count_requests_by_route_and_status(daemon):
    daemon.get("/api/v2/me", user="alice")
    text = daemon.get("/metrics").text
    assert 'hpcportal_http_requests_total{method="GET",route="/api/v2/me",status="200"} 1.0' in text
    assert "hpcportal_http_request_duration_seconds_bucket" in text


def test_request_id_header(daemon):
    assert len(daemon.get("/healthz").headers["X-Request-ID"]) == 16


def _routes(app):
    found = {}
    for route in falcon.inspect.inspect_routes(app):
        methods = {m.method.lower() for m in route.methods if not m.internal}
        # OpenAPI names a parameter without falcon's converter: {path:path} is {path}.
        found[re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path)] = methods
    return found


def _app(tmp_path, **extra):
    return create_app(_config(tmp_path, **extra))


def _config(tmp_path, **extra):
    data = {"database": {"url": f"sqlite:///{tmp_path}/p.db"}, "auth": {"secret": TEST_SECRET},
            "paths": {"images": str(tmp_path / "images"), "templates": str(tmp_path / "templates"),
                      "uploads": str(tmp_path / "uploads")}}
    data.update(extra)
    return Config.from_dict(data)


@pytest.mark.unit  # in process
def test_openapi_document_and_routes_agree(tmp_path):
    app = _app(tmp_path)
    routes = _routes(app)
    doc = document()
    documented = {path: {m for m in item if m in HTTP_METHODS} for path, item in doc["paths"].items()}
    assert routes == documented
    assert doc["openapi"].startswith("3.1")


def test_openapi_document_is_served_without_token(daemon):
    answer = daemon.get("/api/openapi.json")
    assert answer.status_code == 200
    assert "/api/v2/me" in answer.json()["paths"]


class _Echo:
    def on_post(self, req, resp):
        resp.media = read_json(req)


class _Broken:
    def on_get(self, req, resp):
        raise RuntimeError("secret internals")


@pytest.fixture
def client(tmp_path, users):
    app = _app(tmp_path, server={"max_json_body": 64})
    app.add_route("/api/test/echo", _Echo())
    app.add_route("/api/test/broken", _Broken())
    from hpcportal.db import upgrade
    upgrade(app.portal.database)
    return falcon.testing.TestClient(app, headers=auth_headers("alice"))


@pytest.mark.unit  # in process
@pytest.mark.parametrize("body, content_type, status, error, words", [
    ('{"a": 1,', "application/json", 400, "malformed_json", "line 1, column 9"),
    ("[1, 2]", "application/json", 400, "malformed_json", "The request body must be a JSON object."),
    ("", "application/json", 400, "missing_body", ""),
    (json.dumps({"x": "y" * 100}), "application/json", 413, "too_large", ""),
    ("a=b", "application/x-www-form-urlencoded", 415, "unsupported_media_type", "application/json"),
], ids=["malformed", "array", "empty", "over max_json_body", "form"])
def test_a_body_read_as_json_is_refused_with_a_clear_error(client, body, content_type, status, error, words):
    answer = client.simulate_post("/api/test/echo", body=body, content_type=content_type)
    assert answer.status_code == status
    assert answer.json["error"] == error
    assert words in answer.json["message"]


@pytest.mark.unit  # in process
def test_unexpected_exception_is_500_with_request_id_and_no_traceback(client):
    answer = client.simulate_get("/api/test/broken")
    assert answer.status_code == 500
    assert answer.json["request_id"] == answer.headers["X-Request-ID"]
    assert "secret internals" not in answer.text and "Traceback" not in answer.text


def test_server_answers_oversized_body_before_reading_it(daemon):
    # waitress refuses a body above uploads.max_chunk_size + margin on its own.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v2/me HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def _open_files_of(path):
    folder = "/proc/self/fd"
    count = 0
    for name in os.listdir(folder):
        try:
            count += os.readlink(os.path.join(folder, name)) == path
        except OSError:  # closed meanwhile
            pass
    return count


@pytest.mark.databases("sqlite")
@pytest.mark.unit  # in process
def test_the_audit_writer_is_not_woken_by_each_record(tmp_path):
    """Records queued between two of the writer's rounds are stored together: a writer
    woken by each record took the interpreter from the request still answering."""
    path = str(tmp_path / "portal.db")
    database = dbmod.open_database(Config.from_dict({"database": {"url": f"sqlite:///{path}"}}))
    dbmod.upgrade(database)
    trail = AuditTrail(database, flush_seconds=1.0)
    trail.start()
    try:
        seen = set()
        for number in range(3):
            trail.record({"user": "alice", "action": f"POST /x/{number}", "outcome": "ok"})
            for _ in range(10):
                seen.add(AuditRecord.select().count())
                time.sleep(0.02)
        wait_for(lambda: AuditRecord.select().count() == 3, timeout=10, message="the records stored")
        assert seen <= {0, 3}
    finally:
        trail.stop()
        database.close()


@pytest.mark.databases("sqlite")  # counts the SQLite file's descriptors
@pytest.mark.unit  # in process
def test_the_audit_writer_lets_its_connection_go_when_idle(tmp_path):
    path = str(tmp_path / "portal.db")
    database = dbmod.open_database(Config.from_dict({"database": {"url": f"sqlite:///{path}"}}))
    dbmod.upgrade(database)
    database.close()
    trail = AuditTrail(database, idle_seconds=0.2)
    trail.start()
    try:
        for number in range(20):
            trail.record({"user": "alice", "action": f"POST /x/{number}", "outcome": "ok"})
        trail.flush()
        assert AuditRecord.select().count() == 20
        database.close()
        wait_for(lambda: _open_files_of(path) == 0, timeout=10, message="the writer to close its connection")
        trail.record({"user": "alice", "action": "POST /after-idle", "outcome": "ok"})  # and opens one again
        trail.flush()
        assert AuditRecord.select().where(AuditRecord.action == "POST /after-idle").count() == 1
    finally:
        trail.stop()
        database.close()
