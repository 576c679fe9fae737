"""What browsers need of the HTTP layer, shown with plain HTTP clients: a body
over the server's limit gets the daemon's JSON 413 with CORS headers (not the
HTTP server's plain-text one), tus-js-client's X-Request-ID passes the
preflight, and answers without a body (204, 304) keep the connection open.
The same in a real browser: tests/test_browser_uploads.py."""

import base64
import json
import socket

import pytest
import requests
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from support.daemon import auth_headers
from support.uploads import SMALL

DASHBOARD = "http://127.0.0.1:5173"
CONFIG = {**SMALL, "security": {"cors_origins": [DASHBOARD]}}
LIMIT = 1024 * 1024                       # SMALL's uploads.max_chunk_size
SERVER_LIMIT = LIMIT + 1024 * 1024        # the HTTP server's: plus 1 MiB of framing
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}

pytestmark = pytest.mark.databases("sqlite")  # the HTTP layer: one backend is enough


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory(config=CONFIG)


def tus_create(session, daemon, length, name="b.bin"):
    metadata = "filename " + base64.b64encode(name.encode()).decode()
    answer = session.post(daemon.url + "/api/v2/files/tus", timeout=30, headers={
        **TUS, **auth_headers("alice"), "Origin": DASHBOARD, "Upload-Length": str(length),
        "Upload-Metadata": metadata})
    assert answer.status_code == 201, answer.text
    return answer.headers["Location"]


class CountingSession(requests.Session):
    """A requests session that counts the TCP connections it opens (urllib3
    reconnects a pooled connection the server closed without a new pool entry)."""

    def __init__(self):
        super().__init__()
        self.connections = 0
        session = self

        class Connection(HTTPConnection):
            def connect(self):
                session.connections += 1
                super().connect()

        class Pool(HTTPConnectionPool):
            ConnectionCls = Connection

        adapter = requests.adapters.HTTPAdapter()
        adapter.poolmanager.pool_classes_by_scheme = {"http": Pool}
        self.mount("http://", adapter)


def read_answer(sock):
    """(status, headers, body) of one HTTP answer with a Content-Length, read off ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"connection closed after {data!r}"
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        more = sock.recv(65536)
        assert more, "connection closed inside the body"
        body += more
    return int(lines[0].split()[1]), headers, body


def raw_request(method, path, length, **headers):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_body_over_the_server_limit_gets_the_json_413_with_cors_at_once_and_the_connection_lives(
        daemon):
    url = tus_create(requests.Session(), daemon, 8 * LIMIT)
    path = url.replace(daemon.url, "")
    size = SERVER_LIMIT + 4096
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as sock:
        # Headers only: the answer comes before a byte of the body is sent.
        sock.sendall(raw_request("PATCH", path, size, **TUS, **OCTETS, **auth_headers("alice"),
                                 Origin=DASHBOARD, **{"Upload-Offset": "0"}))
        status, headers, body = read_answer(sock)
        assert status == 413
        assert headers["access-control-allow-origin"] == DASHBOARD
        assert headers["content-type"].startswith("application/json")
        assert "connection" not in headers
        answer = json.loads(body)
        assert answer["error"] == "chunk_too_large"
        assert answer["max_chunk_size"] == LIMIT and answer["max_body_size"] == SERVER_LIMIT - 1
        # The body, sent anyway, is dropped as it arrives (a body's bytes never read
        # as a request); the next request on the connection is answered.
        sock.sendall(b"\0" * size)
        sock.sendall(raw_request("HEAD", path, 0, **TUS, **auth_headers("alice")))
        status, headers, _ = read_answer(sock)
    assert status == 200 and headers["upload-offset"] == "0"


def test_clients_that_send_the_whole_body_first_read_the_same_413_on_one_connection(daemon):
    session = CountingSession()
    url = tus_create(session, daemon, 8 * LIMIT)
    too_big = b"x" * (SERVER_LIMIT + 1)
    answers = [
        session.patch(url, data=too_big, timeout=30, headers={
            **TUS, **OCTETS, **auth_headers("alice"), "Origin": DASHBOARD, "Upload-Offset": "0"}),
        session.post(daemon.url + "/api/v2/files/upload/chunk", data=too_big, timeout=30,
                     params={"upload_id": "x", "chunk_index": 0},
                     headers={**auth_headers("alice"), "Origin": DASHBOARD,
                              "Content-Type": "application/octet-stream"}),
        session.post(daemon.url + "/api/v2/files/upload/chunk", timeout=30,
                     data={"upload_id": "x", "chunk_index": "0"},
                     files={"chunk": ("blob", too_big, "application/octet-stream")},
                     headers={**auth_headers("alice"), "Origin": DASHBOARD}),
    ]
    for answer in answers:
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == "chunk_too_large"
        assert answer.headers["Access-Control-Allow-Origin"] == DASHBOARD
    # Just under the server's limit the body reaches the app, which judges it itself.
    under = session.patch(url, data=b"x" * (SERVER_LIMIT - 1), timeout=30, headers={
        **TUS, **OCTETS, **auth_headers("alice"), "Upload-Offset": "0"})
    assert under.status_code == 413 and under.json()["error"] == "chunk_too_large"
    assert session.head(url, headers={**TUS, **auth_headers("alice")}, timeout=30) \
        .headers["Upload-Offset"] == "0"
    assert session.connections == 1


def test_a_client_waiting_for_100_continue_gets_the_413_instead_and_sends_nothing(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as sock:
        sock.sendall(raw_request("POST", "/api/v2/files/upload/chunk?upload_id=x&chunk_index=0",
                                 10 * SERVER_LIMIT, Expect="100-continue",
                                 **{"Content-Type": "application/octet-stream"},
                                 **auth_headers("alice")))
        status, headers, body = read_answer(sock)
        assert status == 413 and json.loads(body)["error"] == "chunk_too_large"
        # No body follows, so nothing is there to drop: the connection ends.
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_the_preflight_allows_tus_js_clients_request_id(daemon):
    preflight = requests.options(daemon.url + "/api/v2/files/tus/abc", timeout=30, headers={
        "Origin": DASHBOARD, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers":
            "authorization,content-type,tus-resumable,upload-offset,x-request-id"})
    assert preflight.status_code == 204
    allowed = {h.strip().lower() for h in
               preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "tus-resumable", "upload-offset",
            "x-request-id"} <= allowed


def test_answers_without_a_body_keep_the_connection_open(daemon):
    session = CountingSession()
    url = tus_create(session, daemon, 3 * 1000)
    answers = [session.options(url, timeout=30, headers={
        "Origin": DASHBOARD, "Access-Control-Request-Method": "PATCH"})]
    for offset in range(0, 3000, 1000):
        answers.append(session.patch(url, data=b"y" * 1000, timeout=30, headers={
            **TUS, **OCTETS, **auth_headers("alice"), "Origin": DASHBOARD,
            "X-Request-ID": f"r{offset}", "Upload-Offset": str(offset)}))
    file_id = answers[-1].headers["Upload-File-Id"]
    content = session.get(f"{daemon.url}/api/v2/files/{file_id}/content",
                          headers=auth_headers("alice"), timeout=30)
    answers.append(session.get(f"{daemon.url}/api/v2/files/{file_id}/content", timeout=30,
                               headers={**auth_headers("alice"),
                                        "If-None-Match": content.headers["ETag"]}))
    answers.append(session.delete(f"{daemon.url}/api/v2/files/{file_id}", timeout=30,
                                  headers=auth_headers("alice")))
    assert [a.status_code for a in answers] == [204, 204, 204, 204, 304, 204]
    assert all("Connection" not in a.headers for a in answers)
    assert session.connections == 1
    # Asking for the end of the connection still ends it.
    session.get(daemon.url + "/healthz", headers={"Connection": "close"}, timeout=30)
    session.get(daemon.url + "/healthz", timeout=30)
    assert session.connections == 2
