"""The daemon's life cycle: readiness notification and graceful stop."""

import os
import signal
import socket
import subprocess
import sys
import time

import jwt
import pytest
import requests
from support.daemon import REPO
from support.waiting import wait_for


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


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_sigterm_finishes_the_request_in_flight(daemon):
    body = b'{"padding": "' + b"x" * 64 + b'"}'
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
        sock.sendall(b"POST /api/v2/me HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)
        daemon.proc.send_signal(signal.SIGTERM)
        # New connections are refused while the old one is still served.
        wait_for(lambda: _refused(daemon.port), timeout=30, interval=0.05,
                 message="the listening socket to close")
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


def test_config_is_taken_after_the_command_too(daemon_factory):
    """``hpcportald serve --config FILE``, as most command lines take it."""
    daemon = daemon_factory(start=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    with open(daemon.log_path, "ab") as log:
        daemon.proc = subprocess.Popen(
            [sys.executable, "-m", "hpcportal", "serve", "--config", daemon.config_path],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    daemon.wait_ready()  # on the port of that file: nothing else names it
    assert requests.get(daemon.url + "/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize("argv", [["--config", "{path}", "token", "--user", "alice"],
                                  ["token", "--user", "alice", "--config", "{path}"],
                                  ["token", "--config", "{path}", "--user", "alice"]])
@pytest.mark.unit  # in process
def test_token_reads_the_config_wherever_the_option_stands(shared_dir, argv):
    secret = "placement-secret-0123456789-abcdefghij"
    path = os.path.join(shared_dir.state, "config.yaml")
    with open(path, "w") as handle:
        handle.write(f"auth: {{secret: {secret}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    answer = subprocess.run([sys.executable, "-m", "hpcportal", *[a.format(path=path) for a in argv]],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert answer.returncode == 0, answer.stderr
    claims = jwt.decode(answer.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
