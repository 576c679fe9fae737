"""Notifications: per-user events in the shared database, and where they go.

``events`` stores them (once across heads), ``messages`` says what happened in
plain words, ``jobs`` turns the job monitor's state changes into job events,
``uploads`` and ``templates`` record upload, quota and template events,
``preferences`` keeps each user's choices, ``delivery`` sends e-mails
(``mail``) and webhook calls (``webhook``) once across heads, and ``stream``
serves the live event streams from an asyncio loop beside the HTTP server.
``build_notifications`` makes them all for the portal's builder.
"""

from dataclasses import dataclass

from .delivery import DeliveryWorker
from .events import EventStore
from .jobs import JobEvents
from .mail import Mailer
from .preferences import Preferences
from .stream import StreamHub
from .templates import TemplateEvents
from .uploads import UploadEvents
from .webhook import WebhookCaller


@dataclass
class Notifications:
    events: EventStore
    preferences: Preferences
    jobs: JobEvents
    worker: DeliveryWorker
    streams: StreamHub

    @property
    def services(self):
        return (self.worker, self.streams)

    def upload_events(self, *, quota, used_bytes):
        """The uploads' observer, given the quota and how usage is measured (built with the uploads)."""
        return UploadEvents(self.events, quota=quota, used_bytes=used_bytes)


def build_notifications(settings, database, *, holder):
    """Every part for the ``notifications`` settings; ``holder`` names this head in delivery claims."""
    mailer = Mailer(settings)
    preferences = Preferences(database, email_on=mailer.enabled, webhook_prefixes=settings.webhook_prefixes)
    events = EventStore(database, preferences.channels, retention=settings.retention)
    job_events = JobEvents(events, pending_warning=settings.pending_warning)
    worker = DeliveryWorker(
        database, mailer=mailer, webhooks=WebhookCaller(preferences.webhook_allowed), preferences=preferences,
        holder=holder, max_tries=settings.max_tries, backoff=settings.retry_backoff,
        claim_timeout=settings.claim_timeout,
        periodic=(job_events.check_waiting, TemplateEvents(events).check_invalid, events.purge))
    streams = StreamHub(events, database, max_streams=settings.max_streams,
                        max_per_user=settings.max_streams_per_user, heartbeat=settings.stream_heartbeat)
    events.listen(worker.wake.set)
    events.listen(streams.wake)
    return Notifications(events=events, preferences=preferences, jobs=job_events, worker=worker,
                         streams=streams)
