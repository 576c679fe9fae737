"""Notifications over HTTP: the inbox, preferences and the event stream."""

from ..errors import ServiceUnavailable, ValidationError
from .base import bool_param, paging, read_json

EVENTS_PATH = "/api/v2/events"


class InboxResource:
    def __init__(self, events):
        self._events = events

    def on_get(self, req, resp):
        limit, offset = paging(req)
        resp.media = self._events.page(req.context.user.name, limit=limit, offset=offset,
                                       unread_only=bool_param(req, "unread"))

    def on_post_read(self, req, resp):
        body = read_json(req)
        ids, everything = body.get("ids"), body.get("all")
        if set(body) - {"ids", "all"}:
            raise ValidationError("Expected {\"ids\": [...]} or {\"all\": true}.",
                                  errors={sorted(set(body) - {"ids", "all"})[0]: "unknown field"})
        if everything is not None and everything is not True:
            raise ValidationError("'all' must be true.", errors={"all": "must be true"})
        if (ids is None) == (everything is None):
            raise ValidationError("Send either {\"ids\": [...]} or {\"all\": true}.", code="missing_field",
                                  errors={"ids": "ids or all is required"})
        if ids is not None and (not isinstance(ids, list) or len(ids) > 1000 or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in ids)):
            raise ValidationError("'ids' must be a list of at most 1000 notification ids.",
                                  errors={"ids": "a list of positive integers"})
        changed = self._events.mark_read(req.context.user.name, None if everything else ids)
        resp.media = {"success": True, "marked": changed,
                      "unread": self._events.page(req.context.user.name, limit=1, offset=0)["unread"]}


class PreferencesResource:
    def __init__(self, preferences):
        self._preferences = preferences

    def on_get(self, req, resp):
        resp.media = self._preferences.show(req.context.user.name)

    def on_put(self, req, resp):
        resp.media = self._preferences.update(req.context.user.name, read_json(req))


class EventsResource:
    """Accepts a stream and hands its connection to the stream hub (no worker thread kept)."""

    def __init__(self, streams):
        self._streams = streams

    def on_get(self, req, resp):
        detach = req.env.get("hpcportal.detach")
        if detach is None:
            raise ServiceUnavailable("Event streams are served by the daemon's own HTTP server only.",
                                     code="streams_unavailable")
        if "text/event-stream" not in (req.get_header("Accept") or "").lower():
            raise ValidationError("GET /api/v2/events is a server-sent event stream: send "
                                  "Accept: text/event-stream (EventSource does).", code="not_an_event_stream",
                                  errors={"Accept": "must include text/event-stream"})
        raw = req.get_header("Last-Event-ID") or req.get_param("lastEventId")
        last_id = None
        if raw is not None and raw.strip() != "":
            if not raw.strip().isdigit() or len(raw.strip()) > 18:
                raise ValidationError("Last-Event-ID must be the id of an event (a number).",
                                      errors={"Last-Event-ID": "must be a number"})
            last_id = int(raw.strip())
        ticket = self._streams.reserve(req.context.user.name, last_id)
        resp.content_type = "text/event-stream; charset=utf-8"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")  # nginx: pass events on at once
        resp.stream = ticket.body(detach)


class RememberEmail:
    """Keeps each user's token ``email`` claim: the default address of their e-mails."""

    def __init__(self, preferences):
        self._preferences = preferences

    def process_resource(self, req, resp, resource, params):
        user = getattr(req.context, "user", None)
        if user is not None and user.email:
            self._preferences.remember_email(user.name, user.email)


def add_routes(app, *, notifications):
    app.add_route("/api/v2/notifications", InboxResource(notifications.events))
    app.add_route("/api/v2/notifications/read", InboxResource(notifications.events), suffix="read")
    app.add_route("/api/v2/me/notifications", PreferencesResource(notifications.preferences))
    app.add_route(EVENTS_PATH, EventsResource(notifications.streams))
