"""Uploads from a real browser: headless Chromium on a page served from another
origin than the daemon's, with the daemon's CORS allow-list set to it.

Uppy with @uppy/tus and the reference chunk-protocol client (clients/js/)
upload files made in the page, across a daemon killed and restarted mid-way;
what the page can read of a 401 and of a 413; a page from an origin not on the
list is refused. The HTTP details behind them: tests/test_uploads_browser_http.py.
``scripts/test -m browser`` runs only these.
"""

import hashlib
import re
import time

import pytest

from support.browser import Page, StaticSite, build_site, ensure_installed, start_chromium
from support.daemon import make_token

MiB = 1024 * 1024
# A 16 MiB chunk limit keeps the over-the-limit upload small; Uppy sends 16 MiB chunks.
UPLOADS = {"max_chunk_size": "16MiB", "free_space_reserve": 0}

pytestmark = [pytest.mark.browser, pytest.mark.databases("sqlite")]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page's origin, and a second origin not on the daemon's list."""
    cache = ensure_installed()
    folder = tmp_path_factory.mktemp("site")
    build_site(cache, str(folder))
    allowed, other = StaticSite(str(folder)), StaticSite(str(folder))
    yield allowed, other
    allowed.close()
    other.close()


@pytest.fixture(scope="module")
def chromium(site, tmp_path_factory):
    driver = start_chromium(str(tmp_path_factory.mktemp("chromium-profile")))
    yield driver
    driver.quit()


@pytest.fixture
def daemon(daemon_factory, site):
    return daemon_factory(config={"uploads": UPLOADS,
                                  "security": {"cors_origins": [site[0].origin]}})


@pytest.fixture
def page(chromium, site):
    return Page(chromium, site[0].origin)


def make_file(page, name, size):
    made = page.wait(page.run("makeFile", name, size), timeout=60)
    assert made["error"] is None, made["error"]
    return made["result"]["sha256"]


def stored_sha256(daemon, file_id):
    """The sha256 of the stored file's bytes, read from the disk, and the daemon's."""
    info = daemon.get(f"/api/v2/files/{file_id}", user="alice").json()
    digest = hashlib.sha256()
    with open(info["storage_path"], "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    assert digest.hexdigest() == info["sha256"]
    return info["sha256"]


def kill_and_restart(daemon):
    daemon.kill()
    daemon.start()


def test_uppy_with_request_ids_uploads_a_large_file_across_a_daemon_restart(page, daemon):
    size = 256 * MiB
    sha256 = make_file(page, "big 결과.bin", size)
    name = page.run("uppyUpload", "uppy-big", "big 결과.bin", {
        "endpoint": daemon.url + "/api/v2/files/tus/", "token": make_token("alice"),
        "chunkSize": 16 * MiB, "retryDelays": [200, 1000, 2000, 3000, 5000, 5000, 5000],
        "meta": {"job_id": "tmp-browser"}})
    page.wait_progress(name, size // 4)
    kill_and_restart(daemon)   # SIGKILL: chunks in flight are lost, acknowledged ones kept
    state = page.wait(name)
    assert state["error"] is None and state["result"]["failed"] == [], state
    files = daemon.get("/api/v2/files?job_id=tmp-browser", user="alice").json()["files"]
    assert [(f["filename"], f["size"]) for f in files] == [("big 결과.bin", size)]
    assert stored_sha256(daemon, files[0]["file_id"]) == sha256
    # Uppy asked where to go on (HEAD) after the restart rather than starting over.
    assert any(e["event"] == "upload-success" for e in state["log"])
    metrics = daemon.get("/metrics").text
    assert re.search(r'hpcportal_http_requests_total\{method="HEAD",route="/api/v2/files/tus/'
                     r'\{upload_id\}",status="200"\} [1-9]', metrics), metrics


def test_uppy_without_a_chunk_size_reads_the_413_and_stops_at_once(page, daemon):
    make_file(page, "too-big.bin", 24 * MiB)   # over the server's 17 MiB body limit
    name = page.run("uppyUpload", "uppy-413", "too-big.bin", {
        "endpoint": daemon.url + "/api/v2/files/tus/", "token": make_token("alice")})
    state = page.wait(name, timeout=60)
    assert len(state["result"]["failed"]) == 1, state
    error = state["result"]["failed"][0]["error"]
    assert "413" in error and "chunk_too_large" in error and str(16 * MiB) in error
    # Read as the daemon's answer, not a network error: tus-js-client gives up at once.
    metrics = daemon.get("/metrics").text
    patches = re.findall(r'hpcportal_http_requests_total\{method="PATCH",route="[^"]*",'
                         r'status="(\d+)"\} (\d+)', metrics)
    assert [(status, float(count)) for status, count in patches] == [("413", 1.0)]


def test_uppys_chunks_share_a_few_kept_alive_connections(page, daemon):
    size = 64 * MiB
    sha256 = make_file(page, "kept.bin", size)
    page.answers()  # only this upload's requests below
    state = page.wait(page.run("uppyUpload", "uppy-kept", "kept.bin", {
        "endpoint": daemon.url + "/api/v2/files/tus/", "token": make_token("alice"),
        "chunkSize": 4 * MiB, "addRequestId": False}))  # that one has a test of its own
    assert state["result"]["failed"] == [], state
    patches = [a for a in page.answers() if a[0] == "PATCH" and a[1].startswith(daemon.url)]
    assert [a[2] for a in patches] == [204] * 16
    # Each 204 used to end its connection: 16 chunks, 16 connections.
    assert len({a[3] for a in patches}) <= 2, patches
    file_id = daemon.get("/api/v2/files", user="alice").json()["files"][0]["file_id"]
    assert stored_sha256(daemon, file_id) == sha256


def test_the_reference_client_uploads_in_parallel_chunks_and_resumes(page, daemon):
    size = 48 * MiB
    sha256 = make_file(page, "chunks.bin", size)
    options = {"baseUrl": daemon.url, "token": make_token("alice"), "chunkSize": 4 * MiB,
               "parallel": 3, "jobId": "tmp-chunks",
               "retryDelays": [200, 1000, 2000, 3000, 5000, 5000, 5000]}
    name = page.run("chunkedUpload", "chunks-restart", "chunks.bin", options)
    page.wait_progress(name, 12 * MiB)
    kill_and_restart(daemon)
    state = page.wait(name)
    assert state["error"] is None, state
    assert state["result"]["file"]["sha256"] == sha256
    assert state["result"]["totalChunks"] == 12
    assert stored_sha256(daemon, state["result"]["file"]["file_id"]) == sha256

    # Stopped by the page (the tab closed, say), then resumed from the upload's id:
    # the daemon says which chunks it has, and only the others are sent again.
    sha256 = make_file(page, "resumed 파일.bin", size)
    name = page.run("chunkedUpload", "chunks-stopped", "resumed 파일.bin", options)
    page.wait_progress(name, 16 * MiB)
    page.driver.execute_script("window.jobs['chunks-stopped'].abort()")
    stopped = page.wait(name)
    assert stopped["error"]["name"] == "AbortError", stopped
    resumed = page.wait(page.run("chunkedUpload", "chunks-resumed", "resumed 파일.bin",
                                 {**options, "uploadId": stopped["uploadId"]}))
    assert resumed["error"] is None, resumed
    assert resumed["result"]["file"]["filename"] == "resumed 파일.bin"
    assert resumed["result"]["file"]["sha256"] == sha256
    assert 0 < resumed["result"]["chunksSent"] <= 12 - stopped["chunksSent"] + 3


def test_an_expired_token_reaches_the_page_as_a_readable_401(page, daemon):
    expired = make_token("alice", iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200,
                         exp=int(time.time()) - 3600)
    state = page.wait(page.run("fetchJob", "expired", daemon.url + "/api/v2/me",
                               {"headers": {"Authorization": f"Bearer {expired}"}}))
    assert state["error"] is None, state
    answer = state["result"]
    assert answer["status"] == 401
    # What the Auth Portal's flow reads (flask_jwt_extended's shape) to refresh the token.
    assert answer["body"]["msg"] == "Token has expired"
    assert answer["body"]["error"] == "token_expired"
    assert answer["wwwAuthenticate"] == "Bearer" and answer["requestId"]
    # Uppy too learns it from the daemon's answer, not from a network error.
    make_file(page, "late.bin", MiB)
    uppy = page.wait(page.run("uppyUpload", "uppy-401", "late.bin", {
        "endpoint": daemon.url + "/api/v2/files/tus/", "token": expired}))
    assert [e["status"] for e in uppy["log"] if e["event"] == "upload-error"] == [401], uppy
    assert "Token has expired" in uppy["result"]["failed"][0]["error"]


def test_a_page_from_an_origin_not_on_the_list_is_refused(chromium, site, daemon):
    page = Page(chromium, site[1].origin)
    state = page.wait(page.run("fetchJob", "other-origin", daemon.url + "/api/v2/me",
                               {"headers": {"Authorization": f"Bearer {make_token('alice')}"}}))
    assert state["result"] is None
    assert state["error"]["name"] == "TypeError", state   # the browser's "Failed to fetch"
    # The same page from the listed origin reads the answer.
    allowed = Page(chromium, site[0].origin)
    state = allowed.wait(allowed.run("fetchJob", "listed-origin", daemon.url + "/api/v2/me",
                                     {"headers": {"Authorization": f"Bearer {make_token('alice')}"}}))
    assert state["result"]["status"] == 200 and state["result"]["body"]["user"] == "alice"
