"""The delivery worker: sends pending e-mails and webhook calls, once across heads.

Every head runs one. A delivery is claimed with a conditional update (only the
head whose update changed the row sends it) for ``claim_timeout``; a head that
dies holding a claim is replaced when the claim runs out. Failures are retried
with a doubling back-off up to ``max_tries``, then the delivery is marked failed
and the error shown in the user's preferences. Nothing here runs in a request.
"""

import datetime
import logging
import time

import peewee

from ..models.base import utcnow
from ..models.notifications import NotificationDelivery, NotificationEvent, NotificationPreference
from ..passes import PassLoop
from .mail import DeliveryFailed

log = logging.getLogger("hpcportal.notifications")

# Pending deliveries are looked for this often (and at once after a local event):
# the first attempt comes within seconds of the event on whichever head is free.
POLL_SECONDS = 2
# The periodic checks (job.waiting, template.invalid, retention) need not run as often.
PERIODIC_SECONDS = 10
MAX_BACKOFF = 3600


class DeliveryWorker:
    name = "notifications"

    def __init__(self, database, *, mailer, webhooks, preferences, holder, max_tries, backoff,
                 claim_timeout, periodic=(), clock=utcnow):
        """``periodic``: callables run once per pass (job.waiting checks, retention)."""
        self._database = database
        self._mailer = mailer
        self._webhooks = webhooks
        self._preferences = preferences
        self._holder = holder
        self._max_tries = max(1, max_tries)
        self._backoff = backoff
        self._claim_timeout = claim_timeout
        self._periodic = tuple(periodic)
        self._clock = clock
        self._last_error = None
        self._periodic_due = 0.0
        self._loop = PassLoop("notifications", self._pass, interval=POLL_SECONDS, margin=claim_timeout + 30,
                              log=log, failure_message="notifications pass failed", join_timeout=2)
        self.wake = self._loop.wake

    def start(self):
        self._loop.start()

    def stop(self):
        self._loop.stop()

    def health(self):
        # A slow or dead mail server delays e-mails; it must not take the head out of service:
        # an overdue pass is only degraded.
        ready, detail = self._loop.health("delivering", self._last_error)
        return True, detail if ready else f"degraded: {detail}"

    def _pass(self):
        try:
            with self._database.connection_context():
                if time.monotonic() >= self._periodic_due:
                    self._periodic_due = time.monotonic() + PERIODIC_SECONDS
                    for task in self._periodic:
                        task()
                while self.run_once() and not self._loop.stopping():
                    pass
            self._last_error = None
        except peewee.PeeweeException as exc:
            self._last_error = f"database: {exc}"
            log.warning("notifications: database error: %s", exc)

    def run_once(self, batch=20):
        """Claims and sends up to ``batch`` due deliveries; how many were tried."""
        now = self._clock()
        due = list(NotificationDelivery.select(NotificationDelivery.id).where(
            (NotificationDelivery.status == "pending") & (NotificationDelivery.next_attempt_at <= now)
            & (NotificationDelivery.claimed_until.is_null() | (NotificationDelivery.claimed_until < now)))
            .order_by(NotificationDelivery.id).limit(batch))
        tried = 0
        for row in due:
            if self._loop.stopping():
                break
            delivery = self._claim(row.id)
            if delivery is not None:
                self._attempt(delivery)
                tried += 1
        return tried

    def _claim(self, delivery_id):
        now = self._clock()
        until = now + datetime.timedelta(seconds=self._claim_timeout)
        claimed = NotificationDelivery.update(
            claimed_by=self._holder, claimed_until=until, attempts=NotificationDelivery.attempts + 1
        ).where((NotificationDelivery.id == delivery_id) & (NotificationDelivery.status == "pending")
                & (NotificationDelivery.claimed_until.is_null() | (NotificationDelivery.claimed_until < now))
                ).execute()
        return NotificationDelivery.get_by_id(delivery_id) if claimed == 1 else None

    def _attempt(self, delivery):
        event = NotificationEvent.get_or_none(NotificationEvent.id == delivery.event_id)
        mine = (NotificationDelivery.id == delivery.id) & (NotificationDelivery.claimed_by == self._holder)
        if event is None:  # removed by retention meanwhile
            NotificationDelivery.update(status="failed", last_error="the event was removed").where(mine).execute()
            return
        try:
            if delivery.channel == "email":
                if not self._mailer.enabled:
                    raise DeliveryFailed("e-mail is turned off on this cluster")
                self._mailer.send(delivery.target, event)
            else:
                preference = NotificationPreference.get_or_none(NotificationPreference.user == delivery.user)
                secret = preference.webhook_secret if preference else None
                self._webhooks.send(delivery.target, secret, event)
        except DeliveryFailed as exc:
            self._failed(delivery, mine, str(exc))
            return
        NotificationDelivery.update(status="sent", sent_at=self._clock(), last_error=None,
                                    claimed_until=None).where(mine).execute()
        log.info("delivered event %s of %s by %s (attempt %d)", event.id, delivery.user, delivery.channel,
                 delivery.attempts)

    def _failed(self, delivery, mine, error):
        attempts = delivery.attempts
        if attempts >= self._max_tries:
            NotificationDelivery.update(status="failed", last_error=error, claimed_until=None).where(mine).execute()
            message = f"gave up after {attempts} attempts: {error}"
            log.warning("delivery %s of %s %s", delivery.id, delivery.user, message)
        else:
            wait = min(MAX_BACKOFF, self._backoff * 2 ** (attempts - 1))
            NotificationDelivery.update(
                last_error=error, claimed_until=None,
                next_attempt_at=self._clock() + datetime.timedelta(seconds=wait)).where(mine).execute()
            message = f"attempt {attempts} of {self._max_tries} failed, retrying in {wait:.0f} s: {error}"
            log.info("delivery %s of %s: %s", delivery.id, delivery.user, message)
        self._preferences.record_error(delivery.user, message)
