"""Hashing uploads as they arrive, off the request threads.

Completing a large upload must not read it all back, so the head that saw it
start keeps a running sha256 of its leading bytes (``RunningHash``). Feeding
that hash inside the request made every chunk or tus PATCH wait for it too,
about a fifth of a 32 MiB PATCH here (tus clients send one PATCH at a time).
``BackgroundHashing`` runs those jobs on worker threads (hashlib and preadv
release the GIL, so they use another core) and lets a completion wait until
an upload's jobs are done, so the hash it takes over is as far as it can be.
"""

import collections
import hashlib
import logging
import queue
import threading

log = logging.getLogger(__name__)


class RunningHash:
    """The sha256 of an upload's first ``offset`` bytes, computed by this
    process while chunks arrived in order. Chunk uploads also fingerprint the
    tokens of the chunk rows hashed: a chunk re-sent since (on any head)
    changes its token, and completion then falls back to reading the whole file."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.next_index = 0
        self.offset = 0
        self.digest = hashlib.sha256()
        self.tokens = hashlib.sha256()


class BackgroundHashing:
    def __init__(self, workers=2):
        self._workers = workers
        self._queue = queue.SimpleQueue()
        self._threads = []
        self._pending = collections.Counter()
        self._idle = threading.Condition()

    def submit(self, upload_id, job):
        """Run ``job()`` soon; its failure only costs the completion a re-read."""
        with self._idle:
            self._pending[upload_id] += 1
            if not self._threads:
                for number in range(self._workers):
                    thread = threading.Thread(target=self._run, name=f"upload-hashing-{number}",
                                              daemon=True)
                    thread.start()
                    self._threads.append(thread)
        self._queue.put((upload_id, job))

    def wait(self, upload_id, timeout):
        """Until no job of ``upload_id`` is queued or running (or ``timeout``)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending[upload_id], timeout)

    def _run(self):
        while True:
            upload_id, job = self._queue.get()
            try:
                job()
            except Exception as exc:  # the completion reads back what was not hashed
                log.info("upload %s: hashing ahead failed (%s); its completion will read it back",
                         upload_id, exc)
            finally:
                with self._idle:
                    self._pending[upload_id] -= 1
                    if not self._pending[upload_id]:
                        del self._pending[upload_id]
                    self._idle.notify_all()
