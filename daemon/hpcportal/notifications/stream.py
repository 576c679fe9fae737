"""The event streams: each user's events as server-sent events, from one asyncio loop.

A stream is accepted by an ordinary request (token, caps, headers); then the
server hands its connection over (``Ticket.body``) and the worker thread is
free again. One thread runs an asyncio loop holding every open stream; one
database poll a second (or at once after a local event) reads the events of
every user after the newest one seen and writes them to their users' streams.
A client that resumes sends ``Last-Event-ID`` and first gets what it missed,
read from the database, so any head can resume any stream.
"""

import asyncio
import collections
import concurrent.futures
import json
import logging
import threading
import time

from ..errors import RateLimited, ServiceUnavailable
from ..models.base import isoformat

log = logging.getLogger("hpcportal.notifications")

POLL_SECONDS = 1.0
# A client that does not read: its stream ends (it resumes from Last-Event-ID) rather
# than its unsent events piling up in this process.
MAX_UNSENT = 1024 * 1024
# How long an id skipped by the events read is looked for (another head's transaction
# may commit it later), and how many skipped ids of one read are remembered.
GAP_SECONDS = 30
MAX_GAPS = 1000


def format_event(event):
    data = {**(event.data or {}), "id": event.id, "type": event.type, "title": event.title,
            "createdAt": isoformat(event.created_at)}
    data.setdefault("message", event.message)
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.id}\nevent: {event.type}\ndata: {payload}\n\n".encode()


class Ticket:
    """One accepted stream, between the request that accepted it and its connection."""

    def __init__(self, hub, user, last_id):
        self._hub = hub
        self.user = user
        self.last_id = last_id

    def body(self, detach):
        """The response body: iterating it asks the server (``detach``) for the connection."""
        return _HandOver(self, detach)

    def take(self, sock, head):
        """The connection (None when the client left first), in the server's loop thread."""
        if sock is None:
            self._hub.release(self.user)
        else:
            self._hub.attach(self, sock, head)


class _HandOver:
    def __init__(self, ticket, detach):
        self._ticket = ticket
        self._detach = detach

    def __iter__(self):
        self._detach(self._ticket.take)
        return iter(())


class _Stream:
    def __init__(self, user, after, writer):
        """``after``: events up to this id are not this stream's (None: not known yet)."""
        self.user = user
        self.after = after
        self.writer = writer
        # Ids sent lately: the catch-up and the poll may both bring an event.
        self._sent = collections.deque(maxlen=512)

    def send(self, events):
        for event in events:
            if (self.after is not None and event.id <= self.after) or event.id in self._sent:
                continue
            self.writer.write(format_event(event))
            self._sent.append(event.id)
        if self.writer.transport.get_write_buffer_size() > MAX_UNSENT:
            self.writer.close()


class StreamHub:
    name = "event-streams"

    def __init__(self, store, database, *, max_streams, max_per_user, heartbeat):
        self._store = store
        self._database = database
        self._max_streams = max_streams
        self._max_per_user = max_per_user
        self._heartbeat = heartbeat
        self._lock = threading.Lock()
        self._counts = collections.Counter()  # user -> reserved or open streams
        self._streams = collections.defaultdict(set)
        self._loop = None
        self._thread = None
        self._wake = None
        self._cursor = None
        self._gaps = {}  # id not seen yet (a transaction still open, or rolled back) -> since when
        self._executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="event-db")
        self._last_error = None

    # -- from request threads

    def reserve(self, user, last_id):
        """A ticket for one more stream of ``user``, or 429 past the caps."""
        with self._lock:
            if self._loop is None:
                raise ServiceUnavailable("Event streams are not running on this head.", code="streams_unavailable")
            if sum(self._counts.values()) >= self._max_streams:
                raise RateLimited(f"This head serves {self._max_streams} event streams already; "
                                  "retry shortly.", code="too_many_streams", headers={"Retry-After": "10"})
            if self._counts[user] >= self._max_per_user:
                raise RateLimited(f"You have {self._max_per_user} event streams open on this head already; "
                                  "close one (a tab) first.", code="too_many_streams",
                                  headers={"Retry-After": "10"})
            self._counts[user] += 1
        return Ticket(self, user, last_id)

    def release(self, user):
        with self._lock:
            self._counts[user] -= 1
            if self._counts[user] <= 0:
                del self._counts[user]

    def open_streams(self):
        with self._lock:
            return sum(self._counts.values())

    def wake(self):
        """A local event was stored: poll now rather than within the second."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    # -- the service

    def start(self):
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="event-streams", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self):
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            self._loop = None
        loop.call_soon_threadsafe(self._close_all)
        self._thread.join(5)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def health(self):
        if self._thread is None or not self._thread.is_alive():
            return False, "not running"
        state = f"{self.open_streams()} open"
        return True, f"degraded: {self._last_error} ({state})" if self._last_error else state

    def _run(self, ready):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._wake = asyncio.Event()
        self._tasks = [loop.create_task(self._poll()), loop.create_task(self._beat())]
        with self._lock:
            self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _close_all(self):
        for streams in list(self._streams.values()):
            for stream in list(streams):
                stream.writer.close()
        for task in self._tasks:
            task.cancel()
        asyncio.get_running_loop().call_later(0.2, asyncio.get_running_loop().stop)

    def attach(self, ticket, sock, head):
        loop = self._loop
        if loop is None:
            sock.close()
            self.release(ticket.user)
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(self._serve(ticket, sock, head)))

    def _db(self, function, *args):
        def call():
            with self._database.connection_context():
                return function(*args)
        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _serve(self, ticket, sock, head):
        stream = None
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
            stream = _Stream(ticket.user, ticket.last_id, writer)
            # Registered before the catch-up is read: what the poll finds meanwhile is
            # sent too, and the stream's ids sent keep either from being sent twice.
            self._streams[ticket.user].add(stream)
            writer.write(head + b"retry: 3000\n\n")
            if ticket.last_id is not None:
                stream.send(await self._db(self._store.since, ticket.user, ticket.last_id))
            else:
                stream.after = self._cursor if self._cursor is not None else await self._db(self._store.newest_id)
            await writer.drain()
            while await reader.read(4096):
                pass  # the client sends nothing more; end of input means it left
        except (OSError, asyncio.CancelledError):
            pass
        except Exception:  # one stream's failure must not end the others
            log.exception("event stream of %s failed", ticket.user)
        finally:
            if stream is not None:
                self._streams[ticket.user].discard(stream)
                if not self._streams[ticket.user]:
                    self._streams.pop(ticket.user, None)
                stream.writer.close()
            else:
                sock.close()
            self.release(ticket.user)

    async def _poll(self):
        while self._cursor is None:
            try:
                self._cursor = await self._db(self._store.newest_id)
            except Exception as exc:  # the database may be down at start
                self._last_error = f"database: {exc}"
                await asyncio.sleep(POLL_SECONDS)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                low = min(self._gaps) - 1 if self._gaps else self._cursor
                events = await self._db(self._store.after, low)
                self._last_error = None
            except Exception as exc:
                self._last_error = f"database: {exc}"
                continue
            by_user = collections.defaultdict(list)
            for event in self._new(events):
                by_user[event.user].append(event)
            for user, mine in by_user.items():
                for stream in list(self._streams.get(user, ())):
                    stream.send(mine)

    def _new(self, events):
        """The events not dispatched yet. Ids are taken when a row is inserted, and
        transactions of several heads commit in any order: an id skipped now may
        appear later, so skipped ids are asked for again for GAP_SECONDS."""
        now = time.monotonic()
        fresh = []
        for event in events:
            if event.id > self._cursor:
                for missing in range(max(self._cursor + 1, event.id - MAX_GAPS), event.id):
                    self._gaps[missing] = now
                self._cursor = event.id
                fresh.append(event)
            elif self._gaps.pop(event.id, None) is not None:
                fresh.append(event)
        for missing, since in list(self._gaps.items()):
            if now - since > GAP_SECONDS:
                del self._gaps[missing]
        return fresh

    async def _beat(self):
        while True:
            await asyncio.sleep(self._heartbeat)
            for streams in list(self._streams.values()):
                for stream in list(streams):
                    if not stream.writer.is_closing():
                        stream.writer.write(b": heartbeat\n\n")
