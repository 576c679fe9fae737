"""Calling one user's webhook: a signed JSON POST, no redirects, a short time-out."""

import hashlib
import hmac
import json

import urllib3

from ..models.base import isoformat
from .mail import DeliveryFailed

TIMEOUT = 5.0


def signature(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookCaller:
    def __init__(self, allowed, timeout=TIMEOUT):
        """``allowed(url)``: the administrators' prefix list, checked again at each call."""
        self._allowed = allowed
        self._pool = urllib3.PoolManager(num_pools=8, maxsize=2, retries=False,
                                         timeout=urllib3.Timeout(total=timeout))

    def send(self, url, secret, event):
        if not self._allowed(url):
            raise DeliveryFailed(f"webhook {url}: no longer an allowed address")
        payload = json.dumps({"type": event.type, "user": event.user, "time": isoformat(event.created_at),
                              "data": {**(event.data or {}), "id": event.id, "title": event.title,
                                       "message": event.message}},
                             separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "hpcportal",
                   "X-Hpcportal-Event": event.type, "X-Hpcportal-Delivery": str(event.id),
                   "X-Hpcportal-Signature": signature(secret or "", payload)}
        try:
            answer = self._pool.request("POST", url, body=payload, headers=headers, redirect=False,
                                        preload_content=True)
        except (urllib3.exceptions.HTTPError, ValueError, OSError) as exc:
            raise DeliveryFailed(f"webhook {url}: {type(exc).__name__}: {exc}") from None
        if not 200 <= answer.status < 300:
            raise DeliveryFailed(f"webhook {url}: answered HTTP {answer.status}")
