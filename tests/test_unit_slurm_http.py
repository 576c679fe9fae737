"""The keep-alive pool to slurmrestd (slurm/http.py), against real HTTP servers on loopback
and on a unix socket: what it reuses, what it refuses to reuse, and how each failure is named.

The same pool against the real slurmrestd: tests/test_slurm_rest.py."""

import os
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from hpcportal.slurm.http import ConnectionPool, NoAnswer, Unreachable

pytestmark = pytest.mark.unit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        self._answer(200, f"{self.path} {self.server.connections}".encode())
        if self.path == "/bye":
            # Answered as kept alive, then closed: what a server does to a connection idle too long.
            self.close_connection = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/drop":
            self.close_connection = True  # read, never answered: the answer is lost
            return
        if self.path == "/wait":
            # Answers only once the caller has done its own work (it sets the event).
            assert self.server.release.wait(5)
        self._answer(200, body)

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def setup(self):
        super().setup()
        self.server.connections += 1

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, family=socket.AF_INET):
        self.address_family = family
        self.connections = 0
        self.release = threading.Event()
        super().__init__(address, Handler)


class UnixServer(Server):
    def __init__(self, path):
        super().__init__(path, socket.AF_UNIX)

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)


@pytest.fixture
def server():
    server = Server(("127.0.0.1", 0))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def pool_for(server, **options):
    return ConnectionPool(f"http://127.0.0.1:{server.server_address[1]}",
                          **{"size": 2, "connect_timeout": 2, "read_timeout": 5, **options})


def test_calls_share_one_kept_alive_connection(server):
    pool = pool_for(server)
    try:
        answers = [pool.request("GET", f"/{n}") for n in range(3)]
        assert answers == [(200, b"/0 1"), (200, b"/1 1"), (200, b"/2 1")]
        assert pool.request("POST", "/echo", body=b'{"a": 1}') == (200, b'{"a": 1}')
        assert pool.connections_opened == 1 and server.connections == 1
    finally:
        pool.close()


def test_work_runs_between_sending_and_reading_the_answer(server):
    """The server answers /wait only after the caller's own work: had ``send`` waited for
    the answer, the work would come too late and the server's wait would fail."""
    pool = pool_for(server)
    try:
        exchange = pool.send("POST", "/wait", body=b"job")
        server.release.set()
        assert exchange.receive() == (200, b"job")
        with pytest.raises(RuntimeError):
            exchange.receive()
    finally:
        pool.close()


def test_a_connection_the_server_closed_is_not_reused(server):
    pool = pool_for(server)
    try:
        assert pool.request("GET", "/bye") == (200, b"/bye 1")
        time.sleep(0.2)  # the connection lies idle
        # The server has closed the connection the pool keeps: a POST sent on it would be lost.
        assert pool.request("POST", "/echo", body=b"job") == (200, b"job")
        assert pool.connections_opened == 2 and server.connections == 2
    finally:
        pool.close()


def test_an_answer_that_never_comes_is_no_answer(server):
    pool = pool_for(server)
    try:
        with pytest.raises(NoAnswer):
            pool.request("POST", "/drop", body=b"job")
        # The broken connection is gone: the next call opens a fresh one.
        assert pool.request("GET", "/after")[0] == 200
    finally:
        pool.close()


def test_a_slow_answer_times_out_as_no_answer(server):
    pool = pool_for(server, read_timeout=0.2)
    try:
        with pytest.raises(NoAnswer):
            pool.request("POST", "/wait", body=b"job")
    finally:
        server.release.set()
        pool.close()


def test_nobody_listening_is_unreachable():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        pool = ConnectionPool(f"http://127.0.0.1:{taken.getsockname()[1]}", size=1, connect_timeout=1,
                              read_timeout=1)
        with pytest.raises(Unreachable):
            pool.request("GET", "/")
    finally:
        taken.close()


def test_unix_socket(tmp_path):
    path = str(tmp_path / "restd.socket")
    server = UnixServer(path)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    pool = ConnectionPool(f"unix:{path}", size=1, connect_timeout=1, read_timeout=5)
    try:
        assert pool.request("GET", "/x") == (200, b"/x 1")
        assert pool.request("GET", "/y") == (200, b"/y 1")
        os.unlink(path)
        pool.close()
        with pytest.raises(Unreachable):
            pool.request("GET", "/z")
    finally:
        server.shutdown()
        server.server_close()


def test_addresses_it_cannot_use_are_refused():
    for url in ("ftp://host:21", "http://", "slurmrestd:6820"):
        with pytest.raises(ValueError):
            ConnectionPool(url, size=1, connect_timeout=1, read_timeout=1)


def test_a_connection_numbered_past_1024_is_kept_alive(server):
    """A head with a thousand event streams open gives new sockets numbers past 1024,
    which select() cannot watch: the check for a closed connection must not refuse them."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1100:
        pytest.skip(f"needs 1100 open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    fillers = []
    pool = pool_for(server)
    try:
        while len(fillers) < 1030:
            fillers.append(os.open("/dev/null", os.O_RDONLY))
        pool.request("GET", "/a")
        assert pool._idle[0].sock.fileno() >= 1024
        pool.request("GET", "/b")
        assert pool.connections_opened == 1
    finally:
        pool.close()
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
