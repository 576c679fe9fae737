"""A short soak (bench/soak.py) against a real daemon: a mixed load from many
clients, then no 5xx, no transport errors, and no growth of the daemon's
threads or open descriptors after warm-up. No timing is asserted; the figures
are printed (``pytest -s``) and the long run is done by hand (docs/operations.md,
"Load: soak runs")."""

import os
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from support.daemon import REPO, make_token

sys.path.insert(0, os.path.join(REPO, "bench"))

import soak  # noqa: E402


@pytest.fixture(scope="module")
def slurm_environment():
    """SLURM_CONF of the local Slurm (``scripts/test`` exports it; else start it)."""
    if not os.environ.get("SLURM_CONF"):
        started = subprocess.run([os.path.join(REPO, "scripts", "dev-slurm"), "start"],
                                 capture_output=True, text=True, timeout=600)
        assert started.returncode == 0, started.stderr[-2000:]
        for line in started.stdout.splitlines():
            if "SLURM_CONF=" in line:
                os.environ["SLURM_CONF"] = line.split("=", 1)[1].strip().strip("'\"")
    return os.environ.get("SLURM_CONF")


# Request threads (server.threads, 8) plus the background services, with room to spare.
POOL = 16


def test_mixed_load_leaves_no_errors_and_no_leaks(daemon_factory, slurm_environment, db_url):
    config = {
        # Many clients as two users: the per-user limits would refuse most calls.
        "security": {"rate_limits": {"submit": 0, "upload_init": 0, "scan": 0}},
        "uploads": {"min_chunk_size": "1KiB", "chunk_size": "64KiB", "free_space_reserve": 0},
    }
    if db_url:
        config["database"] = {"url": db_url, "max_connections": POOL}
    daemon = daemon_factory(config=config)
    run = soak.Soak(daemon.url, make_token, ["alice", "bob"], clients=12, pid=daemon.proc.pid,
                    database_port=urlsplit(db_url).port if db_url else None)
    report = run.run(duration=10, warmup=5)
    soak.print_table(report)

    assert report["requests"] > 0
    assert report["errors"] == 0, report["error_samples"]
    for kind, row in report["by_kind"].items():
        refused = {status for status in row["statuses"] if status.isdigit() and int(status) >= 400}
        # Live streams are limited per head (slurm.max_streams): beyond, a documented 429.
        assert refused <= ({"429"} if kind == "stream" else set()), (kind, row)
    start, end = report["process_start"], report["process_end"]
    assert end["threads"] <= start["threads"], (start, end)
    # Compared once every client has closed its connections (soak.settled_figures)...
    assert not end["sockets"].get("http"), end["sockets"]
    # ...every descriptor, except the database pool's connections, which may grow
    # with the peak of concurrent queries but never beyond the pool's size.
    assert end["unpooled_fds"] <= start["unpooled_fds"], (start["fd_kinds"], end["fd_kinds"],
                                                          start["sockets"], end["sockets"])
    assert end["pooled"] <= POOL, end["sockets"]
    if db_url:
        assert start["pooled"] > 0, start["sockets"]   # the pool's sockets were recognised
    assert "Traceback" not in daemon.logs()


@pytest.mark.unit  # in process
def test_malloc_arenas_are_limited_unless_the_environment_says_otherwise():
    from hpcportal.server import limit_malloc_arenas
    assert limit_malloc_arenas(environ={}) is True  # glibc (Debian)
    assert limit_malloc_arenas(environ={"MALLOC_ARENA_MAX": "4"}) is False


def _target(sock):
    return f"socket:[{os.fstat(sock.fileno()).st_ino}]"


@pytest.mark.unit  # in process
def test_the_fd_check_tells_pooled_database_connections_from_other_descriptors():
    """The flake this guards against: the pool opened one more connection during
    the measured run (a higher peak of concurrent queries). That one is allowed;
    any other new descriptor, a client's connection left open included, is not."""
    with socket.create_server(("127.0.0.1", 0)) as http, \
            socket.create_server(("127.0.0.1", 0)) as database:
        port, database_port = http.getsockname()[1], database.getsockname()[1]
        assert soak.socket_kinds([_target(http)], port) == {"listen": 1}
        before = soak.process_figures(os.getpid(), port, database_port)
        with socket.create_connection(("127.0.0.1", database_port)) as pooled:
            assert soak.socket_kinds([_target(pooled)], port) == {f"tcp-out:{database_port}": 1}
            grown = soak.process_figures(os.getpid(), port, database_port)
        assert grown["pooled"] == before["pooled"] + 1
        assert grown["unpooled_fds"] == grown["fds"] - grown["pooled"]
        # This process is both ends here: the accepted end is what the daemon
        # holds for a client, the client's end is an outbound connection.
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = http.accept()
            with served:
                assert soak.socket_kinds([_target(served)], port) == {"http": 1}
                assert soak.socket_kinds([_target(client)], port) == {f"tcp-out:{port}": 1}
                left_open = soak.process_figures(os.getpid(), port, database_port)
        assert left_open["sockets"]["http"] == 1
        assert left_open["pooled"] == before["pooled"]
