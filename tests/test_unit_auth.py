"""The token matrix of docs/configuration.md, "Authentication", in process: each
refusal's exact body.

tests/test_auth.py proves the same against a real daemon over HTTP; this is the
fast copy to run while changing code.
"""

import pwd
import time
import warnings

import jwt
import pytest

from hpcportal.auth import UserDirectory
from hpcportal.errors import PermissionDenied
from support.daemon import TEST_SECRET, make_token
from support.inprocess import inprocess
from support.tokens import claims, handmade

pytestmark = pytest.mark.unit

NO_BEARER = "Missing 'Bearer' type in 'Authorization' header. Expected 'Authorization: Bearer <JWT>'"


def hs512_token():
    with warnings.catch_warnings():  # the test secret is short for HS512, on purpose
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims(), TEST_SECRET, algorithm="HS512")


def expired_token():
    now = int(time.time())
    return make_token("alice", exp=now - 3600, iat=now - 7200, nbf=now - 7200)


def not_yet_valid_token():
    later = int(time.time()) + 3600
    return make_token("alice", nbf=later, exp=later + 600)


def token_without_exp():
    return jwt.encode({k: v for k, v in claims().items() if k != "exp"}, TEST_SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def portal():
    with inprocess({"users": {"deny": ["bob"]}}) as portal:
        yield portal


def me(portal, authorization=None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return portal.get("/api/v2/me", headers=headers)


def flask_jwt_body(error, msg):
    """flask_jwt_extended's ``msg``, with the portal's own fields beside it."""
    return {"success": False, "error": error, "message": msg, "msg": msg}


@pytest.mark.parametrize("authorization, error, msg", [
    (None, "missing_token", "Missing Authorization Header"),
    ("Basic YWxpY2U6cHc=", "missing_token", NO_BEARER),
    ("Token abc", "missing_token", NO_BEARER),
    ("bearer abc", "missing_token", NO_BEARER),
    (lambda: f"Bearer {expired_token()}", "token_expired", "Token has expired"),
], ids=["no header", "basic", "token scheme", "lower-case bearer", "expired"])
def test_401_answers_with_flask_jwt_extended_body_and_www_authenticate(portal, authorization, error, msg):
    answer = me(portal, authorization() if callable(authorization) else authorization)
    assert answer.status_code == 401
    assert answer.json == flask_jwt_body(error, msg)
    assert answer.headers["WWW-Authenticate"] == "Bearer"


# Tokens are made when the test runs (callables): made at collection, they could expire first.
@pytest.mark.parametrize("token, msg", [
    (lambda: "not-a-jwt", "Not enough segments"),
    (lambda: jwt.encode(claims(), "another-secret-another-secret-xx", algorithm="HS256"),
     "Signature verification failed"),
    (lambda: handmade({"alg": "none", "typ": "JWT"}, claims()), "The specified alg value is not allowed"),
    (hs512_token, "The specified alg value is not allowed"),
    (lambda: make_token("alice", type="refresh"), "Only non-refresh tokens are allowed"),
    (not_yet_valid_token, "The token is not yet valid (nbf)"),
    (token_without_exp, 'Token is missing the "exp" claim'),
], ids=["malformed", "bad signature", "alg none", "disallowed alg", "refresh", "not yet valid", "no exp"])
def test_invalid_tokens_are_422_with_flask_jwt_extended_msg(portal, token, msg):
    answer = me(portal, f"Bearer {token()}")
    assert answer.status_code == 422
    assert answer.json == flask_jwt_body("invalid_token", msg)


def test_a_bearer_header_of_three_words_is_a_bad_header(portal):
    answer = me(portal, "Bearer abc def")
    assert answer.status_code == 422
    assert answer.json["msg"] == "Bad Authorization header. Expected 'Authorization: Bearer <JWT>'"


@pytest.mark.parametrize("user, error, message", [
    ("no-such-user-here", "unknown_user", "User 'no-such-user-here' does not exist on this cluster."),
    ("root", "user_denied", "The root account may not use the portal."),
    ("daemon", "user_denied",
     "User 'daemon' is a system account (uid 1 is below 1000) and may not use the portal."),
    ("nobody", "user_denied", "User 'nobody' is outside the portal's range of accounts "
                              "(uid 65534 is above 60000) and may not use the portal."),
], ids=["unknown", "root", "below min_uid", "above max_uid"])
def test_accounts_the_portal_refuses_are_403(portal, user, error, message):
    answer = me(portal, f"Bearer {make_token(user)}")
    assert answer.status_code == 403
    assert answer.json == {"success": False, "error": error, "message": message}


def test_a_denied_user_is_403_user_denied(portal):
    answer = me(portal, f"Bearer {make_token('bob')}")
    assert answer.status_code == 403
    assert answer.json["error"] == "user_denied"


def test_a_valid_token_names_the_unix_account(portal):
    answer = me(portal, f"Bearer {make_token('alice')}")
    assert answer.status_code == 200
    assert answer.json == {"user": "alice", "uid": 2001, "gid": 2001, "groups": ["alice"], "admin": False}


@pytest.mark.parametrize("extra", [{"roles": ["user", "admin"]}, {"roles": "admin"}, {"is_admin": True}])
def test_administrator_claims(portal, extra):
    answer = me(portal, f"Bearer {make_token('alice', **extra)}")
    assert answer.status_code == 200 and answer.json["admin"] is True


@pytest.mark.parametrize("extra", [{"roles": ["user"]}, {"roles": "administrator"}, {"is_admin": "true"}])
def test_claims_that_do_not_make_an_administrator(portal, extra):
    assert me(portal, f"Bearer {make_token('alice', **extra)}").json["admin"] is False


@pytest.mark.parametrize("path", ["/api/v2/templates", "/api/v2/apptainer/images", "/api/v2/files",
                                  "/api/slurm/jobs", "/api/slurm/partitions"])
def test_every_api_route_needs_a_token(portal, path):
    answer = portal.get(path)
    assert answer.status_code == 401 and answer.json["msg"] == "Missing Authorization Header"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/api/openapi.json"])
def test_operations_routes_and_the_api_document_need_no_token(portal, path):
    assert portal.get(path).status_code in (200, 503)  # /readyz: 503 while services are stopped


def test_a_remembered_token_is_refused_once_it_expires(portal):
    """Verified tokens are remembered by their text, each only until its expiry (and the
    30 s of clock skew allowed after it: this one has 2 s of them left)."""
    token = make_token("alice", exp=int(time.time()) - 28)
    headers = {"Authorization": f"Bearer {token}"}
    assert portal.get("/api/v2/me", headers=headers).status_code == 200
    assert portal.get("/api/v2/me", headers=headers).status_code == 200  # remembered
    time.sleep(2.5)
    answer = portal.get("/api/v2/me", headers=headers)
    assert answer.status_code == 401 and answer.json["msg"] == "Token has expired"


class Directory:
    """A user directory that counts its lookups."""

    def __init__(self):
        self.lookups = 0
        self.groups = [1001, 2001]

    def getpwnam(self, name):
        self.lookups += 1
        if name != "alice":
            raise KeyError(name)
        return pwd.struct_passwd(("alice", "x", 1001, 1001, "", "/home/alice", "/bin/bash"))

    def getgrouplist(self, name, gid):
        return list(self.groups)


def test_accounts_are_looked_up_again_after_a_while():
    directory, now = Directory(), [100.0]
    users = UserDirectory(1000, getpwnam=directory.getpwnam, getgrouplist=directory.getgrouplist,
                          remember=10, clock=lambda: now[0])
    assert users.lookup("alice").groups == (1001, 2001)
    directory.groups = [1001]  # the directory takes alice out of a group
    now[0] += 9
    remembered = users.lookup("alice", admin=True)
    assert (remembered.groups, remembered.admin, directory.lookups) == ((1001, 2001), True, 1)
    assert users.lookup("alice").admin is False
    now[0] += 2
    assert users.lookup("alice").groups == (1001,) and directory.lookups == 2
    with pytest.raises(PermissionDenied):
        users.lookup("mallory")
    with pytest.raises(PermissionDenied):  # refusals are never remembered: asked again
        users.lookup("mallory")
    assert directory.lookups == 4
    with pytest.raises(PermissionDenied):  # a claim that is no name at all
        users.lookup(["alice"])
