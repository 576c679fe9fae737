"""Each user's notification preferences: where e-mails and webhook calls go, and for what."""

import re
import secrets

import peewee

from ..errors import ValidationError
from ..models.base import isoformat, utcnow
from ..models.notifications import NotificationDelivery, NotificationPreference
from .events import KINDS

# Sent by e-mail and webhook unless the user chooses: every state change would be too many.
DEFAULT_EVENTS = ("job.finished", "job.waiting", "upload.expired", "quota.warning", "template.invalid",
                  "template.proposal")
_ADDRESS = re.compile(r"[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]{1,253}")


class Preferences:
    def __init__(self, database, *, email_on, webhook_prefixes):
        self._database = database
        self._email_on = email_on
        self._prefixes = tuple(webhook_prefixes)
        self._seen_emails = {}  # user -> the token email this head stored last

    def channels(self, preference, kind):
        """The (channel, target) pairs an event of ``kind`` goes to for ``preference`` (a row or None)."""
        if preference is None:
            return []
        events = preference.events if preference.events is not None else DEFAULT_EVENTS
        if kind not in events:
            return []
        out = []
        address = preference.email_address or preference.token_email
        if self._email_on and preference.email_enabled and address:
            out.append(("email", address))
        if self.webhook_allowed(preference.webhook_url):
            out.append(("webhook", preference.webhook_url))
        return out

    def webhook_allowed(self, url):
        return bool(url) and any(url.startswith(prefix) for prefix in self._prefixes)

    def remember_email(self, user, email):
        """Keeps the token's ``email`` claim: the default address when the user chose none."""
        if not isinstance(email, str) or not _ADDRESS.fullmatch(email) or self._seen_emails.get(user) == email:
            return
        updated = (NotificationPreference.update(token_email=email)
                   .where(NotificationPreference.user == user).execute())
        if not updated:
            try:
                with self._database.atomic():
                    NotificationPreference.create(user=user, token_email=email)
            except peewee.IntegrityError:  # another head or request created it meanwhile
                NotificationPreference.update(token_email=email).where(
                    NotificationPreference.user == user).execute()
        self._seen_emails[user] = email

    def show(self, user):
        row = NotificationPreference.get_or_none(NotificationPreference.user == user)
        if row is None:
            row = NotificationPreference(user=user)
        recent = (NotificationDelivery.select().where(NotificationDelivery.user == user)
                  .order_by(NotificationDelivery.id.desc()).limit(10))
        return {
            "email": {"enabled": bool(row.email_enabled) and self._email_on,
                      "address": row.email_address or row.token_email,
                      "available": self._email_on},
            "webhook": {"url": row.webhook_url, "secret": row.webhook_secret,
                        "available": bool(self._prefixes)},
            "events": list(row.events if row.events is not None else DEFAULT_EVENTS),
            "lastError": ({"message": row.last_error, "at": isoformat(row.last_error_at)}
                          if row.last_error else None),
            "deliveries": [{"id": d.id, "eventId": d.event_id, "channel": d.channel, "status": d.status,
                            "attempts": d.attempts, "lastError": d.last_error,
                            "sentAt": isoformat(d.sent_at)} for d in recent],
        }

    def update(self, user, body):
        """Applies a PUT body (any of email, webhook, events); the new preferences."""
        unknown = set(body) - {"email", "webhook", "events"}
        if unknown:
            raise ValidationError(f"Unknown field '{sorted(unknown)[0]}'; expected email, webhook, events.",
                                  errors={sorted(unknown)[0]: "unknown field"})
        values = {}
        if "email" in body:
            values.update(self._email(body["email"]))
        if "webhook" in body:
            values.update(self._webhook(body["webhook"]))
        if "events" in body:
            events = body["events"]
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise ValidationError("'events' must be a list of event kinds.", errors={"events": "must be a list"})
            wrong = [e for e in events if e not in KINDS]
            if wrong:
                raise ValidationError(f"'{wrong[0][:40]}' is not an event kind; expected some of "
                                      f"{', '.join(KINDS)}.", errors={"events": "unknown kind"})
            values["events"] = sorted(set(events), key=KINDS.index)
        values["updated_at"] = utcnow()
        with self._database.atomic():
            if not NotificationPreference.update(**values).where(NotificationPreference.user == user).execute():
                try:
                    with self._database.atomic():
                        NotificationPreference.create(user=user, **values)
                except peewee.IntegrityError:
                    NotificationPreference.update(**values).where(NotificationPreference.user == user).execute()
        return self.show(user)

    def _email(self, email):
        if not isinstance(email, dict) or set(email) - {"enabled", "address"}:
            raise ValidationError("'email' must be an object with 'enabled' and 'address'.",
                                  errors={"email": "expected {enabled, address}"})
        values = {}
        if "enabled" in email:
            if not isinstance(email["enabled"], bool):
                raise ValidationError("'email.enabled' must be true or false.", errors={"email.enabled": "boolean"})
            values["email_enabled"] = email["enabled"]
        if "address" in email:
            address = email["address"]
            if address in (None, ""):
                values["email_address"] = None
            elif not isinstance(address, str) or len(address) > 254 or not _ADDRESS.fullmatch(address):
                raise ValidationError("'email.address' must be one e-mail address such as name@example.org.",
                                      errors={"email.address": "not an e-mail address"})
            else:
                values["email_address"] = address
        return values

    def _webhook(self, webhook):
        if webhook is None:
            return {"webhook_url": None, "webhook_secret": None}
        if not isinstance(webhook, dict) or set(webhook) - {"url", "secret"}:
            raise ValidationError("'webhook' must be an object with 'url' and 'secret', or null.",
                                  errors={"webhook": "expected {url, secret}"})
        url, secret = webhook.get("url"), webhook.get("secret")
        if url in (None, ""):
            return {"webhook_url": None, "webhook_secret": None}
        if not isinstance(url, str) or len(url) > 2000 or any(c in url for c in "\r\n\t "):
            raise ValidationError("'webhook.url' must be a URL.", errors={"webhook.url": "not a URL"})
        if not self._prefixes:
            raise ValidationError("Webhooks are turned off on this cluster.", code="webhooks_off",
                                  errors={"webhook.url": "webhooks are off"})
        if not self.webhook_allowed(url):
            raise ValidationError(
                "'webhook.url' must start with one of the prefixes the administrators allow: "
                + ", ".join(self._prefixes) + ".", code="webhook_not_allowed",
                errors={"webhook.url": "not an allowed prefix"})
        if secret in (None, ""):
            secret = secrets.token_hex(32)
        elif not isinstance(secret, str) or not 16 <= len(secret) <= 128 or not secret.isprintable():
            raise ValidationError("'webhook.secret' must be 16 to 128 printable characters, or empty for "
                                  "one chosen for you.", errors={"webhook.secret": "16 to 128 characters"})
        return {"webhook_url": url, "webhook_secret": secret}

    def record_error(self, user, message):
        NotificationPreference.update(last_error=message[:2000], last_error_at=utcnow()).where(
            NotificationPreference.user == user).execute()
