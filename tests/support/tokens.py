"""Tokens made by hand for the authentication tests: claims, unsigned and HS256-signed JWTs.

Each is built when called, not when a test module is imported: a token made at
collection may have expired by the time its test runs late in a long session.
"""

import base64
import hashlib
import hmac
import json
import time


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header, payload, key=b""):
    """A JWT with any header (alg none, HS256 keyed with a public key, ...)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def claims(user="alice", **extra):
    """An access token's claims, valid for ten minutes from now."""
    now = int(time.time())
    return {"sub": user, "iat": now, "nbf": now, "exp": now + 600, "type": "access", **extra}
