"""A short soak (bench/soak.py) against a real daemon: a mixed load from many
clients, then no 5xx, no transport errors, and no growth of the daemon's
threads or open descriptors after warm-up. No timing is asserted; the figures
are printed (``pytest -s``) and the long run is done by hand (README, "Load: soak figures")."""

import os
import subprocess
import sys

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


def test_mixed_load_leaves_no_errors_and_no_leaks(daemon_factory, slurm_environment):
    daemon = daemon_factory(config={
        # Many clients as two users: the per-user limits would refuse most calls.
        "security": {"rate_limits": {"submit": 0, "upload_init": 0, "scan": 0}},
        "uploads": {"min_chunk_size": "1KiB", "chunk_size": "64KiB", "free_space_reserve": 0},
    })
    run = soak.Soak(daemon.url, make_token, ["alice", "bob"], clients=12, pid=daemon.proc.pid)
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
    assert end["fds"] <= start["fds"], (start["fd_kinds"], end["fd_kinds"])
    assert "Traceback" not in daemon.logs()


def test_malloc_arenas_are_limited_unless_the_environment_says_otherwise():
    from hpcportal.server import limit_malloc_arenas
    assert limit_malloc_arenas(environ={}) is True  # glibc (Debian)
    assert limit_malloc_arenas(environ={"MALLOC_ARENA_MAX": "4"}) is False
