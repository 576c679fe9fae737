"""Audit trail: one row per state-changing call."""

import peewee

from .base import BaseModel, JSONField, utcnow


class AuditRecord(BaseModel):
    at = peewee.DateTimeField(default=utcnow, index=True)
    user = peewee.CharField(max_length=64, null=True, index=True)
    client = peewee.CharField(max_length=64, null=True)
    action = peewee.CharField(max_length=128)
    target = peewee.CharField(max_length=255, null=True)
    outcome = peewee.CharField(max_length=32)
    status = peewee.IntegerField(null=True)
    request_id = peewee.CharField(max_length=32, null=True)
    detail = JSONField(null=True)


MODELS = [AuditRecord]
