"""Upload limits under parallel starts: the user's quota, the number of
unfinished uploads and the free-space reserve hold when sixteen starts by one
user arrive at once, spread over two heads sharing one database; a refused tus
creation reserves nothing."""

import base64
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.daemon import auth_headers
from support.daemon import deep_merge
from support.uploads import SMALL

# The promise is atomicity on every database the daemon supports, so it is checked
# on each of them whatever --db-backends chooses for the rest of the suite.
pytestmark = pytest.mark.databases("sqlite", "mariadb", "postgres", always=True)

PARALLEL = 16
GiB = 1024 ** 3


def _heads(daemon_factory, uploads):
    config = deep_merge(SMALL, {"uploads": uploads,
                                       "security": {"rate_limits": {"upload_init": 0}}})
    return daemon_factory(config=config), daemon_factory(config=config)


def _tus_create(head, size, name="f.bin", body=None, headers=None):
    meta = "filename " + base64.b64encode(name.encode()).decode()
    return head.request("POST", "/api/v2/files/tus", data=body, headers={
        **auth_headers("alice"), "Tus-Resumable": "1.0.0", "Upload-Length": str(size),
        "Upload-Metadata": meta, **(headers or {})})


def _start(head, protocol, size, index):
    if protocol == "tus":
        return _tus_create(head, size, name=f"f{index}.bin")
    return head.post("/api/v2/files/upload/init", user="alice",
                     json={"filename": f"f{index}.bin", "size": size})


def _start_in_parallel(heads, protocol, size):
    """Statuses of PARALLEL starts released at once, alternating between heads."""
    barrier = threading.Barrier(PARALLEL)

    def one(index):
        barrier.wait(timeout=60)
        return _start(heads[index % 2], protocol, size, index)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(one, range(PARALLEL)))


@pytest.mark.parametrize("protocol", ["chunk", "tus"])
def test_parallel_starts_never_pass_the_quota_together(daemon_factory, protocol):
    size, quota = 3000, 10000  # three fit, a fourth would not
    heads = _heads(daemon_factory, {"user_quota": quota})
    answers = _start_in_parallel(heads, protocol, size)
    accepted = [a for a in answers if a.status_code == 201]
    assert len(accepted) * size <= quota
    assert len(accepted) == 3
    assert {a.status_code for a in answers if a.status_code != 201} == {413}
    assert all(a.json()["error"] == "quota_exceeded" for a in answers if a.status_code == 413)


@pytest.mark.parametrize("protocol", ["chunk", "tus"])
def test_parallel_starts_never_pass_the_unfinished_upload_limit(daemon_factory, protocol):
    heads = _heads(daemon_factory, {"max_active_per_user": 4})
    answers = _start_in_parallel(heads, protocol, 10)
    assert sum(a.status_code == 201 for a in answers) == 4
    refused = [a for a in answers if a.status_code != 201]
    assert {a.status_code for a in refused} == {429}
    assert all(a.json()["error"] == "too_many_uploads" for a in refused)


def test_parallel_starts_never_pass_the_free_space_reserve(daemon_factory, shared_dir):
    """Partial files grow only as bytes arrive, so the filesystem alone shows
    no difference after a start: what unfinished uploads will still write is
    counted against the free space too."""
    size = 4 * GiB
    info = os.statvfs(shared_dir.uploads)
    free = info.f_bavail * info.f_frsize
    if free < 12 * GiB:
        pytest.skip("needs 12 GiB free on the test filesystem")
    # Room for two and a half uploads above the reserve: two fit even if other
    # processes take up to 2 GiB meanwhile; a third would need 2 GiB freed.
    reserve = free - 10 * GiB
    heads = _heads(daemon_factory, {"free_space_reserve": reserve, "max_size": "8GiB"})
    answers = _start_in_parallel(heads, "chunk", size)
    accepted = sum(a.status_code == 201 for a in answers)
    assert 1 <= accepted <= 2
    refused = [a for a in answers if a.status_code != 201]
    assert {a.status_code for a in refused} == {507}


@pytest.mark.parametrize("refusal", ["malformed checksum", "body beyond length"])
def test_a_refused_tus_creation_leaves_no_reservation(daemon_factory, refusal):
    quota = 8192
    head, other = _heads(daemon_factory, {"user_quota": quota})
    headers = {"Content-Type": "application/offset+octet-stream"}
    if refusal == "malformed checksum":
        answer = _tus_create(head, quota, body=b"x" * 100,
                             headers={**headers, "Upload-Checksum": "sha256 not*base64"})
        assert answer.status_code == 400, answer.text
    elif refusal == "body beyond length":
        answer = _tus_create(head, 10, body=b"x" * 100, headers=headers)
        assert answer.status_code == 413, answer.text
    # The whole quota is free again, on either head.
    started = other.post("/api/v2/files/upload/init", user="alice",
                         json={"filename": "all.bin", "size": quota})
    assert started.status_code == 201, started.text
