"""Who is calling: JWT verification and the unix user behind the token.

The Auth Portal is a Flask service using flask_jwt_extended 4.x; the dashboard
and the portal react to that library's exact statuses and ``msg`` texts, so
every refusal here reproduces them (see ``AuthenticationError`` uses below).
"""

import dataclasses
import grp
import json
import os
import pwd
import re
import threading
import time
from dataclasses import dataclass, field

import jwt

from .errors import AuthenticationError, ConfigError, PermissionDenied

# How long an account looked up (uid, groups) is used before it is looked up again:
# what changes in the user directory reaches the portal within this time.
ACCOUNT_SECONDS = 10.0
KNOWN_ACCOUNTS = 10000
# Verified tokens remembered (each until it expires), the oldest forgotten first.
VERIFIED_TOKENS = 10000

BEARER = "Bearer"
HEADER = "Authorization"
_EXPECTED = f"Expected '{HEADER}: {BEARER} <JWT>'"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple = field(default_factory=tuple)
    admin: bool = False
    home: str = ""
    shell: str = ""
    # The token's ``email`` claim, if any: the default address of notification e-mails.
    email: str = ""

    def serialize(self):
        return {
            "user": self.name,
            "uid": self.uid,
            "gid": self.gid,
            "groups": [_group_name(gid) for gid in self.groups],
            "admin": self.admin,
        }


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class UserDirectory:
    """Maps a token's identity to a unix account, applying the user policy."""

    def __init__(self, min_uid, deny=(), max_uid=None, getpwnam=pwd.getpwnam,
                 getgrouplist=os.getgrouplist, remember=ACCOUNT_SECONDS, clock=time.monotonic):
        self._min_uid = min_uid
        self._max_uid = max_uid
        self._deny = set(deny)
        self._getpwnam = getpwnam
        self._getgrouplist = getgrouplist
        self._remember = remember
        self._clock = clock
        self._accounts = {}  # name -> (User, when it was looked up)

    def lookup(self, name, admin=False):
        """The account behind ``name``. Each is looked up again after ``remember``
        seconds, as a name service cache does: a user's calls come in bursts, and
        with a directory service behind it every lookup is a round trip."""
        if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}\$?", name, re.I):
            raise PermissionDenied(f"The token's identity {name!r} is not a valid user name.",
                                   code="unknown_user")
        known = self._accounts.get(name)
        if known is not None and self._clock() - known[1] < self._remember:
            return known[0] if known[0].admin == admin else dataclasses.replace(known[0], admin=admin)
        user = self._look_up(name, admin)
        if len(self._accounts) >= KNOWN_ACCOUNTS:
            self._accounts.clear()
        self._accounts[name] = (user, self._clock())
        return user

    def _look_up(self, name, admin):
        try:
            entry = self._getpwnam(name)
        except KeyError:
            raise PermissionDenied(f"User '{name}' does not exist on this cluster.",
                                   code="unknown_user") from None
        if entry.pw_uid == 0:
            raise PermissionDenied("The root account may not use the portal.", code="user_denied")
        if name in self._deny:
            raise PermissionDenied(f"User '{name}' is not allowed to use the portal.", code="user_denied")
        if entry.pw_uid < self._min_uid:
            raise PermissionDenied(
                f"User '{name}' is a system account (uid {entry.pw_uid} is below {self._min_uid}) "
                "and may not use the portal.", code="user_denied")
        # nobody (65534) and accounts of other ranges (containers, remote ids) are never users.
        if self._max_uid is not None and entry.pw_uid > self._max_uid:
            raise PermissionDenied(
                f"User '{name}' is outside the portal's range of accounts (uid {entry.pw_uid} is "
                f"above {self._max_uid}) and may not use the portal.", code="user_denied")
        groups = tuple(sorted(set(self._getgrouplist(name, entry.pw_gid))))
        return User(name=name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, admin=admin,
                    home=entry.pw_dir, shell=entry.pw_shell)


class TokenVerifier:
    """Checks a bearer token against the configured keys and claims."""

    def __init__(self, config, clock=time.time):
        auth = config.auth
        self._algorithms = list(auth.algorithms)
        self._issuer = auth.issuer
        self._audience = auth.audience
        self._leeway = auth.leeway
        self._identity_claim = auth.identity_claim
        self._admin_claim = auth.admin_claim
        self._admin_value = auth.admin_value
        self._invalid_status = auth.invalid_token_status
        self._clock = clock
        self._verified = {}  # token -> its claims, oldest first
        self._verified_lock = threading.Lock()
        self._hmac_key = None
        self._public_key = None
        self._jwks = None
        if any(a.startswith("HS") for a in self._algorithms):
            self._hmac_key = config.jwt_secret()
            if not self._hmac_key:
                raise ConfigError("auth.secret_file: HS* algorithms need auth.secret or auth.secret_file")
        else:
            if auth.public_key_file:
                self._public_key = _read_file(auth.public_key_file, "auth.public_key_file")
            if auth.jwks_file:
                try:
                    self._jwks = jwt.PyJWKSet.from_json(_read_file(auth.jwks_file, "auth.jwks_file"))
                except (jwt.PyJWTError, ValueError, json.JSONDecodeError) as exc:
                    raise ConfigError(f"auth.jwks_file: not a usable JWKS: {exc}") from None

    def _invalid(self, msg):
        return AuthenticationError(msg, status=self._invalid_status, code="invalid_token")

    def token_from_header(self, header):
        """The raw token from an Authorization header, as flask_jwt_extended finds it."""
        if not header:
            raise AuthenticationError("Missing Authorization Header", code="missing_token")
        values = re.split(r",\s*", header)
        bearer = [v for v in values if v.split() and v.split()[0] == BEARER]
        if len(bearer) != 1:
            raise AuthenticationError(
                f"Missing '{BEARER}' type in '{HEADER}' header. {_EXPECTED}", code="missing_token")
        parts = bearer[0].split()
        if len(parts) != 2:
            raise self._invalid(f"Bad {HEADER} header. {_EXPECTED}")
        return parts[1]

    def _key_for(self, token):
        if self._hmac_key is not None:
            return self._hmac_key
        if self._jwks is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            for key in self._jwks.keys:
                if kid is None or key.key_id == kid:
                    return key.key
            raise self._invalid("Signature verification failed")
        return self._public_key

    def decode(self, token):
        """The verified claims, or an AuthenticationError shaped like flask_jwt_extended's.

        A token verified before is known by its exact text until it expires: its
        signature and claims cannot change, and a dashboard sends the same token
        with every call (verifying it anew was most of a call's authentication)."""
        known = self._verified.get(token)
        if known is not None and known["exp"] > self._clock() - self._leeway:
            return known
        claims = self._verify(token)
        if isinstance(claims.get("exp"), (int, float)):
            with self._verified_lock:
                if len(self._verified) >= VERIFIED_TOKENS:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[token] = claims
        return claims

    def _verify(self, token):
        try:
            claims = jwt.decode(
                token,
                key=self._key_for(token),
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("Token has expired", code="token_expired") from None
        except jwt.InvalidTokenError as exc:
            raise self._invalid(str(exc) or "Invalid token") from None
        if "type" in claims and claims["type"] != "access":
            raise self._invalid("Only non-refresh tokens are allowed")
        if self._identity_claim not in claims:
            raise self._invalid(f"Missing claim: {self._identity_claim}")
        return claims

    def identity(self, claims):
        return claims[self._identity_claim]

    def is_admin(self, claims):
        roles = claims.get(self._admin_claim)
        if isinstance(roles, str):
            roles = [roles]
        if isinstance(roles, (list, tuple)) and self._admin_value in roles:
            return True
        return claims.get("is_admin") is True


def _read_file(path, setting):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


class Authenticator:
    """Token -> User. Used by the middleware for every /api/ request."""

    def __init__(self, verifier, directory):
        self._verifier = verifier
        self._directory = directory

    def authenticate(self, authorization_header):
        token = self._verifier.token_from_header(authorization_header)
        claims = self._verifier.decode(token)
        user = self._directory.lookup(self._verifier.identity(claims),
                                      admin=self._verifier.is_admin(claims))
        email = claims.get("email")
        return dataclasses.replace(user, email=email) if isinstance(email, str) and email else user


def mint_token(secret, user, *, admin=False, ttl=3600, algorithm="HS256", clock=time.time, **claims):
    """An access token like the Auth Portal's, for development and tests."""
    now = int(clock())
    payload = {
        "sub": user, "iat": now, "nbf": now, "exp": now + int(ttl),
        "type": "access", "fresh": False, "jti": os.urandom(8).hex(),
    }
    if admin:
        payload["roles"] = ["admin"]
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm=algorithm)
