"""The daemon's life cycle: readiness notification and graceful stop."""

import signal
import socket
import time

import pytest
import requests


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield path, sock
    sock.close()


def test_ready_and_stopping_are_sent_to_notify_socket(daemon_factory, notify_socket):
    path, sock = notify_socket
    daemon = daemon_factory(env={"NOTIFY_SOCKET": path})
    ready = sock.recv(4096).decode()
    assert "READY=1" in ready.splitlines()
    # READY=1 comes only once the socket is bound: the daemon answers right away.
    assert requests.get(daemon.url + "/healthz", timeout=5).status_code == 200
    daemon.proc.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in sock.recv(4096).decode().splitlines()
    assert daemon.proc.wait(30) == 0


def test_sigterm_finishes_the_request_in_flight(daemon):
    body = b'{"padding": "' + b"x" * 64 + b'"}'
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
        sock.sendall(b"POST /api/v2/me HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # New connections are refused while the old one is still served.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", daemon.port), timeout=2).close()
        sock.sendall(body[10:])
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 401")  # a complete, real answer
    assert b"Missing Authorization Header" in reply
    assert daemon.proc.wait(30) == 0
    assert "Traceback" not in daemon.logs()


def test_sigint_stops_cleanly(daemon):
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(30) == 0
    assert "stopped" in daemon.logs()
