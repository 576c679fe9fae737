"""Security review, as behaviour: CORS, security headers, rate limits, the
secret file's permissions and tokens kept out of the logs."""

import os
import subprocess
import sys

import pytest
import yaml

from hpcportal.errors import RateLimited
from hpcportal.ratelimit import RateLimits, parse_rate_limits
from support.daemon import TEST_SECRET, auth_headers, make_token
from support.uploads import SMALL, upload

DASHBOARD = "https://dashboard.example.org"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- CORS ------------------------------------------------------------------


def test_cors_is_off_by_default(daemon):
    answer = daemon.get("/api/v2/me", user="alice", headers={"Origin": DASHBOARD})
    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers
    preflight = daemon.request("OPTIONS", "/api/v2/me", headers={
        "Origin": DASHBOARD, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204
    assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.databases("sqlite")
def test_cors_allows_listed_origins_only(daemon_factory):
    daemon = daemon_factory(config={"security": {"cors_origins": [DASHBOARD, "http://localhost:3000"]}})
    preflight = daemon.request("OPTIONS", "/api/slurm/jobs/submit", headers={
        "Origin": DASHBOARD, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed_headers = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "upload-offset" in allowed_headers  # tus from the browser
    assert int(preflight.headers["Access-Control-Max-Age"]) == 600
    # Tokens travel in a header, never in cookies: credentials mode is never granted.
    assert "Access-Control-Allow-Credentials" not in preflight.headers

    answer = daemon.get("/api/v2/me", user="alice", headers={"Origin": DASHBOARD})
    assert answer.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "Origin" in answer.headers["Vary"]
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    # Errors must be readable by the page too, or it cannot send the user to log in.
    unauthorized = daemon.get("/api/v2/me", headers={"Origin": DASHBOARD})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["Access-Control-Allow-Origin"] == DASHBOARD

    for origin in ("https://evil.example.org", "https://dashboard.example.org.evil.org", "null"):
        answer = daemon.get("/api/v2/me", user="alice", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in answer.headers, origin
        preflight = daemon.request("OPTIONS", "/api/v2/me", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in preflight.headers, origin


@pytest.mark.databases("sqlite")
def test_cors_wildcard_never_grants_credentials(daemon_factory):
    daemon = daemon_factory(config={"security": {"cors_origins": ["*"]}})
    answer = daemon.get("/api/v2/me", user="alice", headers={"Origin": "https://any.example"})
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in answer.headers


@pytest.mark.databases("sqlite")
def test_bad_cors_origin_fails_start_with_one_line(daemon_factory):
    daemon = daemon_factory(config={"security": {"cors_origins": ["dashboard.example.org/app"]}},
                            start=False)
    daemon.start(wait=False)
    assert daemon.proc.wait(30) == 2
    assert "security.cors_origins" in daemon.logs() and "Traceback" not in daemon.logs()


# -- security headers --------------------------------------------------------


@pytest.mark.databases("sqlite")
def test_every_answer_carries_the_security_headers(daemon):
    answers = [
        daemon.get("/healthz"),
        daemon.get("/metrics"),
        daemon.get("/api/openapi.json"),
        daemon.get("/api/v2/me", user="alice"),
        daemon.get("/api/v2/me"),  # 401
        daemon.get("/api/v2/nothing", user="alice"),  # 404
        daemon.request("PUT", "/api/v2/me", user="alice"),  # 405
    ]
    for answer in answers:
        where = f"{answer.request.method} {answer.request.url} {answer.status_code}"
        assert answer.headers["X-Content-Type-Options"] == "nosniff", where
        assert answer.headers["X-Frame-Options"] == "DENY", where
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"], where
        assert answer.headers["Referrer-Policy"] == "no-referrer", where
        assert "Access-Control-Allow-Origin" not in answer.headers, where


@pytest.mark.databases("sqlite")
def test_api_answers_are_not_stored_by_caches_unless_a_resource_says_so(daemon):
    assert daemon.get("/api/v2/me", user="alice").headers["Cache-Control"] == "no-store"
    assert daemon.get("/api/v2/me").headers["Cache-Control"] == "no-store"
    images = daemon.get("/api/v2/apptainer/images", user="alice")
    if images.status_code == 200:  # the catalog chose its own caching
        assert images.headers["Cache-Control"] == "private, max-age=300"


# -- rate limits -------------------------------------------------------------


@pytest.mark.unit  # in process
def test_rate_limit_allows_a_burst_then_refills_at_the_limit_per_minute():
    clock = FakeClock()
    limits = RateLimits(parse_rate_limits({"submit": 60}), clock=clock)
    for _ in range(60):
        limits.check("alice", "submit")
    with pytest.raises(RateLimited) as refused:
        limits.check("alice", "submit")
    assert refused.value.headers["Retry-After"] == "1"
    assert refused.value.to_dict()["limit_per_minute"] == 60
    limits.check("bob", "submit")  # per user
    clock.now += 1.0
    limits.check("alice", "submit")  # one more token after a second
    with pytest.raises(RateLimited):
        limits.check("alice", "submit")
    clock.now += 60
    for _ in range(60):
        limits.check("alice", "submit")


@pytest.mark.unit  # in process
def test_rate_limit_retry_after_says_when_the_next_call_passes():
    clock = FakeClock()
    limits = RateLimits(parse_rate_limits({"scan": 2}), clock=clock)
    limits.check("root-admin", "scan")
    limits.check("root-admin", "scan")
    with pytest.raises(RateLimited) as refused:
        limits.check("root-admin", "scan")
    assert refused.value.headers["Retry-After"] == "30"
    clock.now += 30
    limits.check("root-admin", "scan")


@pytest.mark.unit  # in process
def test_zero_disables_a_limit_and_defaults_are_generous():
    limits = parse_rate_limits({"submit": 0})
    assert limits["submit"] == 0 and limits["upload_init"] >= 60 and limits["scan"] > 0
    assert parse_rate_limits({})["submit"] >= 60
    unlimited = RateLimits(limits, clock=FakeClock())
    for _ in range(10000):
        unlimited.check("alice", "submit")
        unlimited.check("alice", "not-a-limited-action")
    for bad in ({"submit": -1}, {"submit": "many"}, ["submit"]):
        with pytest.raises(ValueError):
            parse_rate_limits(bad)


RATE_LIMITED_CALLS = [
    # (action, method, path, body, admin)
    pytest.param("upload_init", "POST", "/api/v2/files/upload/init", {"filename": "a.txt", "size": 1},
                 False, id="upload-init"),
    pytest.param("scan", "POST", "/api/v2/apptainer/scan", None, True, id="images-scan"),
    pytest.param("scan", "POST", "/api/v2/templates/scan", None, True, id="templates-scan"),
    pytest.param("submit", "POST", "/api/slurm/jobs/submit",
                 {"jobName": "x", "partition": "nowhere", "nodes": 1, "cpus": 1, "memory": "1GB",
                  "time": "00:01:00", "script": "#!/bin/bash\ntrue"}, False, id="submit"),
]


@pytest.mark.databases("sqlite")
@pytest.mark.parametrize("action,method,path,body,admin", RATE_LIMITED_CALLS)
def test_expensive_calls_answer_429_with_retry_after(daemon_factory, action, method, path, body,
                                                     admin):
    daemon = daemon_factory(config={"security": {"rate_limits": {action: 2}}})
    if daemon.get("/api/openapi.json").json()["paths"].get(path) is None:
        pytest.skip(f"{path} is not built yet")
    statuses = [daemon.request(method, path, user="alice", admin=admin, json=body).status_code
                for _ in range(2)]
    assert 429 not in statuses
    refused = daemon.request(method, path, user="alice", admin=admin, json=body)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"] == "rate_limited"
    # Another user has a budget of their own.
    other = daemon.request(method, path, user="bob", admin=admin, json=body)
    assert other.status_code != 429


# -- secrets -----------------------------------------------------------------


def _serve(tmp_path, secret_mode):
    secret = tmp_path / "jwt-secret"
    secret.write_text(TEST_SECRET + "\n")
    os.chmod(secret, secret_mode)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"port": 1}, "auth": {"secret_file": str(secret)},
        "database": {"url": f"sqlite:///{tmp_path}/p.db"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    return subprocess.run([sys.executable, "-m", "hpcportal", "--config", str(config), "serve"],
                          capture_output=True, text=True, env=env, timeout=60), secret


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_serve_refuses_a_secret_file_others_can_read_or_write(tmp_path, mode):
    result, secret = _serve(tmp_path, mode)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "auth.secret_file" in lines[0] and f"{mode:04o}" in lines[0] and "chmod 600" in lines[0]
    assert TEST_SECRET not in result.stderr


def test_serve_refuses_a_public_key_others_can_replace(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = tmp_path / "jwt.pub"
    public.write_bytes(key)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"port": 1}, "database": {"url": f"sqlite:///{tmp_path}/p.db"},
        "auth": {"algorithms": ["ES256"], "public_key_file": str(public)}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    command = [sys.executable, "-m", "hpcportal", "--config", str(config), "check-config"]
    os.chmod(public, 0o644)  # readable by all is fine for a public key
    assert subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=60).returncode == 0
    os.chmod(public, 0o666)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "auth.public_key_file" in result.stderr
    assert "writable by group or others" in result.stderr


def _check_slurm_key(tmp_path, backend, mode=0o600, owner=None, create=True):
    key = tmp_path / "jwt_hs256.key"
    if create:
        key.write_bytes(b"k" * 32)
        os.chmod(key, mode)
        if owner is not None:
            os.chown(key, owner, owner)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"port": 1}, "database": {"url": f"sqlite:///{tmp_path}/p.db"}, "auth": {"secret": TEST_SECRET},
        "slurm": {"backend": backend, "rest_url": "http://127.0.0.1:6820", "jwt_key_file": str(key)}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    return subprocess.run([sys.executable, "-m", "hpcportal", "--config", str(config), "check-config"],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("backend", ["rest", "auto"])
@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_slurm_key_others_can_read_is_refused(tmp_path, backend, mode, users):
    result = _check_slurm_key(tmp_path, backend, mode)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "slurm.jwt_key_file" in result.stderr
    assert f"{mode:04o}" in result.stderr and "chmod 600" in result.stderr


def test_a_slurm_key_of_another_user_is_refused(tmp_path, users):
    result = _check_slurm_key(tmp_path, "rest", owner=2001)
    assert result.returncode == 2 and "slurm.jwt_key_file" in result.stderr and "uid 2001" in result.stderr


def test_the_slurm_key_is_checked_only_where_rest_may_be_used(tmp_path):
    assert _check_slurm_key(tmp_path, "rest").returncode == 0      # root's, 0600
    assert _check_slurm_key(tmp_path, "cli", mode=0o644).returncode == 0
    # auto without the key file uses the commands; rest without it cannot start.
    (tmp_path / "jwt_hs256.key").unlink()
    assert _check_slurm_key(tmp_path, "auto", create=False).returncode == 0
    missing = _check_slurm_key(tmp_path, "rest", create=False)
    assert missing.returncode == 2 and "slurm.jwt_key_file: cannot read" in missing.stderr


@pytest.mark.databases("sqlite")
def test_tokens_and_secrets_never_reach_the_log(daemon_factory):
    daemon = daemon_factory(config={"server": {"log_level": "debug"}})
    good = make_token("alice")
    expired = make_token("alice", exp=1)
    forged = make_token("alice", secret="not-the-secret-at-all-0123456789")
    headers = [{"Authorization": f"Bearer {token}"} for token in (good, expired, forged)]
    headers += [{"Authorization": f"Bearer {good}x"}, {"Authorization": f"Basic {good}"},
                {"Authorization": f"Bearer {good} {good}"}]
    for header in headers:
        for path in ("/api/v2/me", "/api/v2/nothing", "/api/v2/apptainer/images"):
            daemon.get(path, headers=header)
            daemon.post(path, headers=header, json={"token": good})
    daemon.get(f"/api/v2/me?access_token={good}", headers=auth_headers("bob"))
    daemon.stop()
    log = daemon.logs()
    assert "GET /api/v2/me 200" in log  # the access log is there...
    for token in (good, expired, forged):
        for part in token.split("."):
            assert part not in log  # ...without any part of a token
    assert TEST_SECRET not in log
    assert "Authorization" not in log and "Bearer " not in log


# -- files a user controls on disk ---------------------------------------------


def daemon_and_root_secret(daemon_factory, shared_dir):
    """A daemon for small uploads, and a root-only file a user must never read through it."""
    secret = os.path.join(shared_dir.root, "root-only.txt")
    with open(secret, "w") as handle:
        handle.write("root secret\n")
    os.chmod(secret, 0o600)
    return daemon_factory(config=SMALL), secret


@pytest.mark.databases("sqlite")
def test_a_stored_file_swapped_for_a_symlink_is_never_served_or_removed(
        daemon_factory, shared_dir):
    daemon, secret = daemon_and_root_secret(daemon_factory, shared_dir)
    stored = upload(daemon, "alice", b"my own data\n", filename="mine.txt")
    path = stored["storage_path"]
    assert path.startswith(os.path.join(shared_dir.uploads, "alice") + "/")

    # Alice owns the folder: she may swap her file for a symlink to a root-only file.
    os.unlink(path)
    os.symlink(secret, path)
    os.lchown(path, 2001, 2001)
    for suffix in ("/content", "/preview"):
        answer = daemon.get(f"/api/v2/files/{stored['file_id']}{suffix}", user="alice")
        assert answer.status_code in (403, 404, 409), (suffix, answer.status_code)
        assert "root secret" not in answer.text
    daemon.delete(f"/api/v2/files/{stored['file_id']}", user="alice")
    assert open(secret).read() == "root secret\n"


@pytest.mark.databases("sqlite")
def test_a_stored_file_swapped_for_a_hard_link_to_a_root_file_is_never_served(
        daemon_factory, shared_dir):
    daemon, secret = daemon_and_root_secret(daemon_factory, shared_dir)
    # A hard link to someone else's file (here root's, made by root: a user
    # can only do this where fs.protected_hardlinks is off).
    stored = upload(daemon, "alice", b"again\n", filename="again.txt")
    os.unlink(stored["storage_path"])
    os.link(secret, stored["storage_path"])
    answer = daemon.get(f"/api/v2/files/{stored['file_id']}/content", user="alice")
    assert answer.status_code in (403, 404, 409) and "root secret" not in answer.text
    daemon.delete(f"/api/v2/files/{stored['file_id']}", user="alice")
    assert open(secret).read() == "root secret\n"


TRICKS = [
    "/api/v2/files/..%2F..%2Fetc%2Fpasswd/content",
    "/api/v2/files/%2Fetc%2Fpasswd/content",
    "/api/v2/files/upload/..%2F..%2Fetc",
    "/api/slurm/jobs/..%2F..%2Fetc/files/passwd",
    "/api/slurm/jobs/1/files/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/slurm/jobs/1/output?stream=..%2F..%2Fetc%2Fpasswd",
    "/api/v2/apptainer/images/..%2F..%2Fetc%2Fpasswd",
    "/api/v2/templates/..%2F..%2Fetc%2Fpasswd",
]


@pytest.mark.databases("sqlite")
def test_path_tricks_and_huge_numbers_are_refused(daemon):
    for path in TRICKS:
        answer = daemon.get(path, user="alice")
        assert answer.status_code in (400, 403, 404), (path, answer.status_code, answer.text[:200])
        assert "root:x:0:0" not in answer.text
    # Numbers beyond 64 bits are refused, not handed to SQL or lseek (found by the fuzz test).
    for path in ("/api/v2/files?offset=2666899734277836505088", "/api/v2/templates?offset=-99999999999999999999",
                 "/api/slurm/jobs?offset=99999999999999999999", "/api/v2/apptainer/images?limit=1e400"):
        answer = daemon.get(path, user="alice")
        assert answer.status_code in (400, 404), (path, answer.status_code, answer.text[:200])
