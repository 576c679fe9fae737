"""Running the app under waitress: readiness notification and graceful stop."""

import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import threading
import time

import waitress
from waitress.channel import HTTPChannel
from waitress.task import WSGITask

from .bodies import BodyBudget, keeping_bodies_in_memory
from .oversize import refusing_oversized_bodies
from .requestlabels import BoundedLogValues
from .resources.downloads import FileShrank

log = logging.getLogger("hpcportal.server")

# How long a stop waits for requests in flight before closing anyway.
DRAIN_SECONDS = 30
# Socket reads of 256 KiB, not waitress' 8 KiB: the one thread that reads every
# connection spent most of an upload looping over small reads, and uploads were
# bound by it (bench/RESULTS.md). Peak memory stays the same: each read's buffer
# is freed once spooled.
RECV_BYTES = 256 * 1024
# Room for multipart framing around the largest chunk a client may send.
BODY_MARGIN = 1024 * 1024
# Bodies up to uploads.chunk_size plus this (multipart framing and fields) are
# received in memory, up to one per worker thread at once (bodies.py): spooling
# each chunk through TMPDIR cost CPU time and delayed the moment the daemon could
# write it (bench/RESULTS.md).
CHUNK_FRAMING = 64 * 1024


class AnsweringTask(WSGITask):
    """Marks its channel while a response is being produced (see PipelineChannel),
    and keeps the connection open after answers that have no body.

    An app may also keep the connection of a long answer (an event stream) instead of
    holding this worker thread for its whole life: it calls ``environ["hpcportal.detach"]
    (take)`` and returns an empty body; waitress then writes nothing on the connection
    and ``take(socket, head)`` receives it with the response head to send first.
    """

    _bodiless_keep_alive = False
    handoff = None

    def build_response_header(self):
        # waitress ends every HTTP/1.1 connection whose answer lacks Content-Length,
        # also after 204 and 304, which must not carry one: every tus PATCH and CORS
        # preflight cost the browser a new connection.
        self._bodiless_keep_alive = (
            self.version == "1.1" and not self.has_body
            and self.request.headers.get("CONNECTION", "").lower() != "close")
        try:
            return super().build_response_header()
        finally:
            self._bodiless_keep_alive = False

    def set_close_on_finish(self):
        if not self._bodiless_keep_alive:
            super().set_close_on_finish()

    def service(self):
        self.channel.answering = True
        try:
            super().service()
        finally:
            self.channel.answering = False

    def get_environment(self):
        environ = super().get_environment()
        environ["hpcportal.detach"] = self._detach
        return environ

    def _detach(self, take):
        self.handoff = take

    def write(self, data):
        if self.handoff is None:
            return super().write(data)
        if not self.wrote_header:
            self.wrote_header = True
            head = [f"HTTP/1.1 {self.status}"]
            head += [f"{name}: {value}" for name, value in self.response_headers
                     if name.lower() not in ("content-length", "transfer-encoding", "connection")]
            head.append("Connection: close")
            payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
            channel, take = self.channel, self.handoff
            # Sockets belong to the loop's thread: the connection leaves waitress there.
            channel.server.trigger.pull_trigger(lambda: _hand_over(channel, payload, take))
        return None


def _hand_over(channel, head, take):
    if not channel.connected or channel.socket is None or channel.will_close:
        take(None, head)
        return
    channel.del_channel()
    channel.connected = False
    sock = socket.socket(fileno=channel.socket.detach())
    take(sock, head)


class PipelineChannel(HTTPChannel):
    """A connection whose client stops reading does not hold a worker thread.

    Between two pipelined requests waitress makes the worker wait until the
    client has taken all but outbuf_high_watermark (16 MiB) of what is queued
    for it: a client that asks for a large file twice in one packet and reads
    nothing would hold a worker for ever. Instead, this connection answers
    nothing more: its queued requests are dropped and it closes once the
    queued answers are sent (HTTP/1.1 clients retry requests a closed
    connection did not answer). Waiting inside one answer (a worker writing a
    long body) is unchanged; our long bodies are files, sent by the event loop.
    A file that shrinks while it is sent ends its connection early.
    """

    task_class = AnsweringTask
    answering = False

    def _flush_exception(self, flush, do_close=True):
        if flush is None:
            return super()._flush_exception(flush, do_close)

        def flush_or_close(do_close=True):
            # A file cut by its owner while it is sent: the connection closes, so the
            # client sees a short answer; one line in the log, not waitress' traceback.
            try:
                return flush(do_close=do_close)
            except FileShrank as exc:
                log.warning("download ended early: %s", exc.strerror)
                self.will_close = True
                return False
        return super()._flush_exception(flush_or_close, do_close)

    def _flush_outbufs_below_high_watermark(self):
        if self.answering or self.total_outbufs_len <= self.adj.outbuf_high_watermark:
            return super()._flush_outbufs_below_high_watermark()
        with self.requests_lock:
            self.close_when_flushed = True
            for request in self.requests[1:]:
                request.close()
            del self.requests[1:]
        return None


def limit_malloc_arenas(arenas=2, environ=os.environ):
    """Few glibc malloc arenas, set before the worker threads start.

    glibc gives threads that contend for malloc arenas of their own (up to 8 per
    core) and seldom gives their freed memory back: with many worker threads and
    large short-lived buffers (chunk bodies, output slices, squeue snapshots) the
    RSS climbs under submits and output reads and stays up; with two arenas it
    stays flat (bench/RESULTS.md, "Load"). MALLOC_ARENA_MAX in the environment,
    read by glibc itself, wins."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):  # not glibc
        return False


M_ARENA_MAX = -8


def notify(message, environ=os.environ):
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


class Server:
    """One waitress server for one app, stoppable from a signal handler."""

    def __init__(self, app, config):
        self._app = app
        self._config = config
        self._stop_requested = threading.Event()
        self._listening_closed = threading.Event()
        waitress_log = logging.getLogger("waitress")
        if not any(isinstance(f, BoundedLogValues) for f in waitress_log.filters):
            waitress_log.addFilter(BoundedLogValues())
        self._server = waitress.create_server(
            app,
            host=config.server.host,
            port=config.server.port,
            threads=config.server.threads,
            ident="hpcportal",
            max_request_body_size=config.uploads.max_chunk_size + BODY_MARGIN,
            clear_untrusted_proxy_headers=True,
            channel_timeout=300,
            cleanup_interval=30,
            recv_bytes=RECV_BYTES,
            # poll(), not select(): event streams handed to their own loop keep their
            # sockets open, and select() fails for any socket numbered 1024 or more.
            asyncore_use_poll=True,
        )
        # Bodies over max_request_body_size get the app's JSON 413 (oversize.py).
        self._server.channel_class = refusing_oversized_bodies(PipelineChannel)
        largest = config.uploads.chunk_size + CHUNK_FRAMING
        self.bodies = BodyBudget(config.server.threads * largest, largest, app.portal.registry)
        self._server.channel_class = keeping_bodies_in_memory(self._server.channel_class, self.bodies)

    @property
    def port(self):
        return self._server.effective_port

    def run(self):
        portal = self._app.portal
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.request_stop())
        portal.start_services()
        log.info("listening on http://%s:%s", self._config.server.host, self.port)
        notify(f"READY=1\nSTATUS=listening on port {self.port}\nMAINPID={os.getpid()}")
        try:
            self._server.run()
        except (OSError, ValueError) as exc:
            # asyncore's loop ends with EBADF once every channel is closed.
            if not self._stop_requested.is_set():
                raise
            log.debug("server loop ended: %s", exc)
        finally:
            self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
            portal.stop_services()
            log.info("stopped")

    def request_stop(self):
        if self._stop_requested.is_set():
            return
        self._stop_requested.set()
        notify("STOPPING=1")
        log.info("stopping: finishing requests in flight")
        self._app.portal.stopping.set()
        # Sockets are only touched by the loop's own thread (via the trigger):
        # closing one under a running select() would end the loop with EBADF.
        self._server.trigger.pull_trigger(self._stop_listening)
        threading.Thread(target=self._drain_and_close, name="drain", daemon=True).start()

    def _stop_listening(self):
        server = self._server
        server.accepting = False
        server.del_channel()
        server.socket.close()
        self._listening_closed.set()

    def _drain_and_close(self):
        self._listening_closed.wait(5)
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and self._busy():
            time.sleep(0.05)
        self._server.trigger.pull_trigger(self._close_all)

    def _close_all(self):
        for channel in list(self._server._map.values()):
            try:
                channel.close()
            except OSError:
                pass

    def _busy(self):
        dispatcher = self._server.task_dispatcher
        if dispatcher.active_count or dispatcher.queue:
            return True
        return any(isinstance(ch, HTTPChannel)
                   and (ch.request is not None or ch.requests or ch.total_outbufs_len)
                   for ch in list(self._server._map.values()))
