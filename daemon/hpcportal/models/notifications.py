"""Notifications: per-user events, their e-mail and webhook deliveries, preferences.

An event is written once (``key`` is unique: two heads that see the same change
store one row) and read by any head: the inbox, the event stream and the
delivery workers all read it from here. A delivery is claimed by one head at a
time (``claimed_by``/``claimed_until``), so it is sent once whichever head is alive.
"""

import peewee

from .base import BaseModel, JSONField, utcnow


class NotificationEvent(BaseModel):
    user = peewee.CharField(max_length=64, index=True)
    type = peewee.CharField(max_length=32)
    # What makes the event unique, e.g. "job:<submission>:state:RUNNING".
    key = peewee.CharField(max_length=191, unique=True)
    job_id = peewee.CharField(max_length=32, null=True)
    title = peewee.CharField(max_length=255)
    message = peewee.TextField()
    data = JSONField()
    created_at = peewee.DateTimeField(default=utcnow, index=True)
    read = peewee.BooleanField(default=False)


class NotificationDelivery(BaseModel):
    event_id = peewee.BigIntegerField(index=True)
    user = peewee.CharField(max_length=64, index=True)
    channel = peewee.CharField(max_length=16)  # email | webhook
    target = peewee.TextField()
    status = peewee.CharField(max_length=16, default="pending", index=True)  # pending | sent | failed
    attempts = peewee.IntegerField(default=0)
    next_attempt_at = peewee.DateTimeField(default=utcnow, index=True)
    claimed_by = peewee.CharField(max_length=128, null=True)
    claimed_until = peewee.DateTimeField(null=True)
    last_error = peewee.TextField(null=True)
    sent_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)


class NotificationPreference(BaseModel):
    user = peewee.CharField(max_length=64, unique=True)
    email_enabled = peewee.BooleanField(default=True)
    email_address = peewee.CharField(max_length=254, null=True)  # chosen by the user
    token_email = peewee.CharField(max_length=254, null=True)  # the token's email claim, last seen
    webhook_url = peewee.TextField(null=True)
    webhook_secret = peewee.CharField(max_length=128, null=True)
    events = JSONField(null=True)  # kinds delivered by e-mail and webhook; null: all
    last_error = peewee.TextField(null=True)
    last_error_at = peewee.DateTimeField(null=True)
    updated_at = peewee.DateTimeField(default=utcnow)


MODELS = [NotificationEvent, NotificationDelivery, NotificationPreference]
