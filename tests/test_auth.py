"""The JWT matrix against a real daemon over HTTP, and the user policy."""

import time
import warnings

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from support.daemon import TEST_SECRET, Daemon, SharedTree, make_token
from support.tokens import claims, handmade
from support.users import ensure_test_users

EXPECTED_BEARER = "Missing 'Bearer' type in 'Authorization' header. Expected 'Authorization: Bearer <JWT>'"


@pytest.fixture(scope="module")
def rsa_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture(scope="module")
def hs_daemon():
    ensure_test_users()
    tree = SharedTree()
    daemon = Daemon(tree, config={"auth": {"issuer": "auth-portal", "audience": None}}).start()
    yield daemon
    daemon.stop()
    tree.cleanup()


@pytest.fixture(scope="module")
def rs_daemon(rsa_keys):
    ensure_test_users()
    tree = SharedTree()
    key_path = f"{tree.state}/public.pem"
    with open(key_path, "wb") as handle:
        handle.write(rsa_keys[1])
    daemon = Daemon(tree, config={"auth": {"algorithms": ["RS256"], "secret": None,
                                           "public_key_file": key_path,
                                           "audience": "hpc-dashboard"}}).start()
    yield daemon
    daemon.stop()
    tree.cleanup()


def me(daemon, authorization=None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    return daemon.get("/api/v2/me", headers=headers)


def iss(**extra):
    return claims(iss="auth-portal", **extra)


def test_missing_header(hs_daemon):
    answer = me(hs_daemon)
    assert answer.status_code == 401
    assert answer.json()["msg"] == "Missing Authorization Header"
    assert answer.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Token abc", "bearer abc"])
def test_other_scheme(hs_daemon, header):
    answer = me(hs_daemon, header)
    assert answer.status_code == 401
    assert answer.json()["msg"] == EXPECTED_BEARER
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_bearer_with_extra_parts_is_a_bad_header(hs_daemon):
    answer = me(hs_daemon, "Bearer abc def")
    assert answer.status_code == 422
    assert answer.json()["msg"] == "Bad Authorization header. Expected 'Authorization: Bearer <JWT>'"


def hs512_token():
    with warnings.catch_warnings():  # the test secret is short for HS512, on purpose
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(iss(), TEST_SECRET, algorithm="HS512")


def not_yet_valid_token():
    later = int(time.time()) + 3600
    return make_token("alice", iss="auth-portal", nbf=later, exp=later + 600)


# Tokens are made when the test runs (callables): made at collection, they could expire first.
@pytest.mark.parametrize("token, msg", [
    (lambda: "not-a-jwt", "Not enough segments"),
    (lambda: jwt.encode(iss(), "another-secret-another-secret-xx", algorithm="HS256"),
     "Signature verification failed"),
    (lambda: handmade({"alg": "none", "typ": "JWT"}, iss()), "The specified alg value is not allowed"),
    (hs512_token, "The specified alg value is not allowed"),
    (not_yet_valid_token, "The token is not yet valid (nbf)"),
    (lambda: jwt.encode({k: v for k, v in iss().items() if k != "exp"}, TEST_SECRET, algorithm="HS256"),
     'Token is missing the "exp" claim'),
    (lambda: make_token("alice", iss="somebody-else"), "Invalid issuer"),
    (lambda: make_token("alice", iss="auth-portal", type="refresh"), "Only non-refresh tokens are allowed"),
], ids=["malformed", "bad signature", "alg none", "disallowed alg", "not yet valid", "no exp",
        "wrong issuer", "refresh"])
def test_invalid_tokens_are_422(hs_daemon, token, msg):
    answer = me(hs_daemon, f"Bearer {token()}")
    assert answer.status_code == 422
    assert answer.json()["msg"] == msg


def test_expired(hs_daemon):
    token = make_token("alice", iss="auth-portal", exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                       nbf=int(time.time()) - 7200)
    answer = me(hs_daemon, f"Bearer {token}")
    assert answer.status_code == 401
    assert answer.json()["msg"] == "Token has expired"
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_expiry_within_leeway_is_accepted(hs_daemon, users):
    now = int(time.time())
    token = make_token("alice", iss="auth-portal", exp=now - 5, iat=now - 60, nbf=now - 60)
    assert me(hs_daemon, f"Bearer {token}").status_code == 200


@pytest.mark.parametrize("user, error, words", [
    ("no-such-user-here", "unknown_user", "does not exist"),
    ("root", "user_denied", "root"),
    ("daemon", "user_denied", "below 1000"),
    # nobody (uid 65534) exists on every Linux system and is never a portal user.
    ("nobody", "user_denied", "above 60000"),
], ids=["unknown", "root", "below min_uid", "nobody above max_uid"])
def test_accounts_the_portal_refuses_are_403(hs_daemon, user, error, words):
    answer = me(hs_daemon, f"Bearer {make_token(user, iss='auth-portal')}")
    assert answer.status_code == 403
    assert answer.json()["error"] == error
    assert words in answer.json()["message"]


def test_valid_user(hs_daemon, users):
    answer = me(hs_daemon, f"Bearer {make_token('alice', iss='auth-portal')}")
    assert answer.status_code == 200
    body = answer.json()
    assert body == {"user": "alice", "uid": 2001, "gid": 2001, "groups": ["alice"], "admin": False}


@pytest.mark.parametrize("extra", [{"roles": ["user", "admin"]}, {"roles": "admin"}, {"is_admin": True}])
def test_admin(hs_daemon, users, extra):
    answer = me(hs_daemon, f"Bearer {make_token('alice', iss='auth-portal', **extra)}")
    assert answer.status_code == 200
    assert answer.json()["admin"] is True


def test_openapi_needs_no_token(hs_daemon):
    assert hs_daemon.get("/api/openapi.json").status_code == 200


def test_rs256_valid_token(rs_daemon, rsa_keys, users):
    token = jwt.encode(claims(aud="hpc-dashboard"), rsa_keys[0], algorithm="RS256")
    answer = me(rs_daemon, f"Bearer {token}")
    assert answer.status_code == 200
    assert answer.json()["user"] == "alice"


def test_rs256_wrong_audience(rs_daemon, rsa_keys):
    token = jwt.encode(claims(aud="another-app"), rsa_keys[0], algorithm="RS256")
    answer = me(rs_daemon, f"Bearer {token}")
    assert answer.status_code == 422
    # PyJWT's own wording, which flask_jwt_extended passes through unchanged.
    assert answer.json()["msg"] in ("Invalid audience", "Audience doesn't match")


def test_hs_rs_algorithm_confusion_is_refused(rs_daemon, rsa_keys):
    # The classic attack: sign with HS256 using the server's *public* key as secret.
    token = handmade({"alg": "HS256", "typ": "JWT"}, claims(aud="hpc-dashboard"), key=rsa_keys[1])
    answer = me(rs_daemon, f"Bearer {token}")
    assert answer.status_code == 422
    assert answer.json()["msg"] == "The specified alg value is not allowed"


def test_invalid_token_status_can_be_401(daemon_factory):
    daemon = daemon_factory(config={"auth": {"invalid_token_status": 401}})
    answer = me(daemon, "Bearer not-a-jwt")
    assert answer.status_code == 401
    assert answer.json()["msg"] == "Not enough segments"
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_denied_user(daemon_factory):
    daemon = daemon_factory(config={"users": {"deny": ["bob"]}})
    answer = me(daemon, f"Bearer {make_token('bob')}")
    assert answer.status_code == 403
    assert answer.json()["error"] == "user_denied"


def test_users_above_max_uid_are_refused(daemon_factory, users):
    daemon = daemon_factory(config={"users": {"max_uid": 2001}})
    assert me(daemon, f"Bearer {make_token('alice')}").status_code == 200  # uid 2001: the bound itself
    answer = me(daemon, f"Bearer {make_token('bob')}")  # uid 2002
    assert answer.status_code == 403
    assert answer.json()["error"] == "user_denied"
    assert "above 2001" in answer.json()["message"]
