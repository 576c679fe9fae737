"""The events store: per-user events in the shared database, and their deliveries.

``record`` writes an event once (its key is unique, so two heads recording the
same change store one row) together with one delivery row per channel the
user's preferences choose, in one transaction: a head that dies after the
commit loses nothing, and one that dies before it wrote nothing.
"""

import datetime
import logging

import peewee

from ..models.base import isoformat, utcnow
from ..models.notifications import NotificationDelivery, NotificationEvent, NotificationPreference

log = logging.getLogger("hpcportal.notifications")

KINDS = ("job.state", "job.finished", "job.waiting", "upload.completed", "upload.expired",
         "quota.warning", "template.invalid", "template.proposal")


def serialize(event):
    """The inbox's view of an event."""
    item = {"id": event.id, "type": event.type, "title": event.title, "message": event.message,
            "createdAt": isoformat(event.created_at), "read": bool(event.read)}
    if event.job_id:
        item["jobId"] = event.job_id
    return item


class EventStore:
    def __init__(self, database, channels, *, retention, clock=utcnow):
        """``channels(preference)``: the (channel, target) pairs a user's events go to."""
        self._database = database
        self._channels = channels
        self._retention = retention
        self._clock = clock
        self._listeners = []

    def listen(self, callback):
        """``callback()`` after this head recorded an event (wakes deliveries and streams)."""
        self._listeners.append(callback)

    def record(self, user, kind, *, key, title, message, data, job_id=None):
        """Store the event and its deliveries; None when ``key`` was recorded already."""
        assert kind in KINDS, kind
        with self._database.atomic():
            if NotificationEvent.select(NotificationEvent.id).where(NotificationEvent.key == key).exists():
                return None
            try:
                with self._database.atomic():  # a savepoint: a lost race leaves the outer transaction usable
                    event = NotificationEvent.create(
                        user=user, type=kind, key=key[:191], job_id=job_id, title=title[:255],
                        message=message, data=data, created_at=self._clock())
            except peewee.IntegrityError:
                return None
            preference = NotificationPreference.get_or_none(NotificationPreference.user == user)
            for channel, target in self._channels(preference, kind):
                NotificationDelivery.create(event_id=event.id, user=user, channel=channel, target=target,
                                            next_attempt_at=self._clock())
        for callback in self._listeners:
            callback()
        return event

    def page(self, user, *, limit, offset, unread_only=False):
        query = NotificationEvent.select().where(NotificationEvent.user == user)
        if unread_only:
            query = query.where(NotificationEvent.read == False)  # noqa: E712 (SQL, not Python)
        rows = query.order_by(NotificationEvent.id.desc()).limit(limit).offset(offset)
        unread = (NotificationEvent.select().where((NotificationEvent.user == user)
                                                  & (NotificationEvent.read == False))  # noqa: E712
                  .count())
        total = NotificationEvent.select().where(NotificationEvent.user == user).count()
        return {"notifications": [serialize(row) for row in rows], "unread": unread, "total": total}

    def mark_read(self, user, ids=None):
        """Marks the user's events ``ids`` (or all of them) read; the count changed."""
        query = NotificationEvent.update(read=True).where(
            (NotificationEvent.user == user) & (NotificationEvent.read == False))  # noqa: E712
        if ids is not None:
            if not ids:
                return 0
            query = query.where(NotificationEvent.id << list(ids))
        return query.execute()

    def since(self, user, last_id, limit=500):
        """The user's events after ``last_id``, oldest first (event-stream resumption)."""
        return list(NotificationEvent.select().where((NotificationEvent.user == user)
                                                    & (NotificationEvent.id > last_id))
                    .order_by(NotificationEvent.id).limit(limit))

    def after(self, last_id, limit=1000):
        """Every user's events after ``last_id``, oldest first (the streams' one poll)."""
        return list(NotificationEvent.select().where(NotificationEvent.id > last_id)
                    .order_by(NotificationEvent.id).limit(limit))

    def newest_id(self):
        return NotificationEvent.select(peewee.fn.MAX(NotificationEvent.id)).scalar() or 0

    def purge(self):
        """Removes events (and their deliveries) older than the retention."""
        cutoff = self._clock() - datetime.timedelta(seconds=self._retention)
        old = [row.id for row in NotificationEvent.select(NotificationEvent.id)
               .where(NotificationEvent.created_at < cutoff).limit(5000)]
        if not old:
            return 0
        with self._database.atomic():
            NotificationDelivery.delete().where(NotificationDelivery.event_id << old).execute()
            return NotificationEvent.delete().where(NotificationEvent.id << old).execute()
