"""Request bodies kept in memory, within a budget, instead of waitress' temporary files.

waitress receives a whole body before the application sees it, and keeps any
body over ``inbuf_overflow`` (512 KiB) in a temporary file in TMPDIR: each byte
of a 5 MiB upload chunk was written to that file and read back from it (on the
head node usually the same disk) before the daemon copied it into the upload.
Here a body whose length is known and at most ``largest`` bytes is received
into one buffer of exactly its size, as long as all such buffers together stay
within ``budget`` bytes; any other body is spooled to a file as before. Memory
held by bodies therefore never exceeds ``budget``, however many connections
send at once (waitress reads every connection's body, not only those a worker
thread is serving).
"""

import io
import threading
import weakref

from prometheus_client import Counter
from waitress.receiver import FixedStreamReceiver


class BodyBudget:
    """Bytes of request bodies held in memory at once, at most ``budget``."""

    def __init__(self, budget, largest, registry=None):
        self.budget = budget
        self.largest = largest
        self._used = 0
        self._lock = threading.Lock()
        self._kept = Counter(
            "hpcportal_request_bodies",
            "Request bodies too large for waitress' own memory buffer, by where they were "
            "kept while received (memory: within the body budget; file: spooled to TMPDIR)",
            ["kept"], registry=registry)

    @property
    def used(self):
        return self._used

    def take(self, size):
        """True when a body of ``size`` bytes may be kept in memory (then
        ``give_back(size)`` must follow)."""
        if size > self.largest:
            return False
        with self._lock:
            if self._used + size > self.budget:
                return False
            self._used += size
            return True

    def give_back(self, size):
        with self._lock:
            self._used -= size

    def counted(self, kept):
        self._kept.labels(kept).inc()


class MemoryBody:
    """What waitress' body receiver needs of a buffer (``append``, ``getfile``,
    ``close``), over one BytesIO allocated at the body's full size."""

    def __init__(self, size, budget):
        self._file = io.BytesIO()
        self._file.seek(size - 1)
        self._file.write(b"\0")  # one allocation, written over in place
        self._file.seek(0)
        self._received = 0
        # Given back once: on close, or when the buffer is collected (a body
        # waitress dropped some other way).
        self._give_back = weakref.finalize(self, budget.give_back, size)

    def __len__(self):
        return self._received

    def append(self, data):
        self._file.write(data)
        self._received += len(data)

    def getfile(self):
        self._file.seek(0)
        return self._file

    def close(self):
        self._file.close()
        self._give_back()


def keeping_bodies_in_memory(channel_class, budget):
    """A subclass of waitress' ``channel_class`` whose requests keep fitting
    bodies in memory (``budget``)."""

    class Parser(channel_class.parser_class):
        def parse_header(self, header_plus):
            super().parse_header(header_plus)
            receiver = self.body_rcv
            if (not isinstance(receiver, FixedStreamReceiver)
                    or self.content_length < self.adj.inbuf_overflow):
                return  # chunked, no body, or one waitress keeps in memory itself
            if budget.take(self.content_length):
                receiver.buf = MemoryBody(self.content_length, budget)
                budget.counted("memory")
            else:
                budget.counted("file")

    class Channel(channel_class):
        parser_class = Parser

        def handle_close(self):
            # A connection dropped mid-body: waitress never closes its unfinished request,
            # and a reference cycle may keep the buffer (and its budget) until a full
            # garbage collection, so the next bodies would go to files meanwhile.
            request = getattr(self, "request", None)
            buffer = getattr(getattr(request, "body_rcv", None), "buf", None)
            if isinstance(buffer, MemoryBody):
                buffer.close()
            super().handle_close()

    return Channel
