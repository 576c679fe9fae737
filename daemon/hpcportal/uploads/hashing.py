"""Hashing uploads as they arrive, off the request threads.

Completing a large upload must not read it all back, so the head that saw it
start keeps a running sha256 of its leading bytes (``RunningHash``). Feeding
that hash inside the request made every chunk or tus PATCH wait for it too,
about a fifth of a 32 MiB PATCH here (tus clients send one PATCH at a time).
``BackgroundHashing`` runs those jobs on worker threads (hashlib and preadv
release the GIL, so they use another core) and lets a completion wait until
an upload's jobs are done, so the hash it takes over is as far as it can be.
``RunningHashes`` keeps these hashes by upload and decides what each can
continue with.
"""

import collections
import functools
import hashlib
import logging
import os
import queue
import threading

from ..models.uploads import Upload, UploadChunk

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


def _token_line(index, token):
    return f"{index}:{token};".encode()


class RunningHashes:
    """This process's running hashes, one per upload it saw start, fed by
    ``BackgroundHashing`` as chunks or tus PATCHes arrive.

    ``open_partial(row, write)`` opens an upload's partial file and
    ``chunk_span(row, index)`` gives a chunk's (offset, length)."""

    def __init__(self, storage, open_partial, chunk_span):
        self._storage = storage
        self._open_partial = open_partial
        self._chunk_span = chunk_span
        self._hashes = {}  # upload id -> RunningHash
        self._lock = threading.Lock()
        self._ahead = BackgroundHashing()

    def _state(self, upload_id, create=False):
        with self._lock:
            state = self._hashes.get(upload_id)
            if state is None and create:
                state = self._hashes[upload_id] = RunningHash()
            return state

    def drop(self, upload_id):
        with self._lock:
            self._hashes.pop(upload_id, None)

    def wait(self, upload_id, timeout):
        return self._ahead.wait(upload_id, timeout)

    def forget_chunk(self, upload_id, index):
        """A re-send of a chunk already hashed here: start the hash over. Looked at unlocked
        first: hashing holds the lock for whole chunks (one hashed meanwhile gets a new token)."""
        state = self._state(upload_id)
        if state is not None and index < state.next_index:
            with state.lock:
                if index < state.next_index:
                    state.reset()

    def chunk_recorded(self, row, started):
        """Hash ahead what the chunks recorded so far let this process continue.
        The chunks are read here, so that the hashing threads need no database
        connection. Only the process that received chunk 0 keeps a hash: other
        heads would have to read everything from the start."""
        state = self._state(row.id, create=started)
        if state is None:
            return
        following = list(UploadChunk.select(UploadChunk.chunk_index, UploadChunk.token)
                         .where((UploadChunk.upload == row.id)
                                & (UploadChunk.chunk_index >= state.next_index))
                         .order_by(UploadChunk.chunk_index).tuples())
        if following:
            self._ahead.submit(row.id, functools.partial(self._hash_forward, row, following))

    def _hash_forward(self, row, following):
        """Hash the chunks of ``following`` that continue the hash, in order
        (they were just written, so they are read from the page cache). A
        chunk re-sent meanwhile has a new token: the completion notices."""
        state = self._state(row.id)
        if state is None:
            return
        with state.lock:
            fd = None
            try:
                for index, token in following:
                    if index < state.next_index:
                        continue
                    if index != state.next_index:
                        break
                    if fd is None:
                        fd = self._open_partial(row, write=False)
                    offset, length = self._chunk_span(row, index)
                    self._storage.hash_range(fd, state.digest, offset, offset + length, release=True)
                    state.tokens.update(_token_line(index, token))
                    state.next_index += 1
                    state.offset = offset + length
            finally:
                if fd is not None:
                    os.close(fd)

    def tus_committed(self, row, committed, started):
        """Hash ahead up to a tus upload's new offset."""
        # partial, not a lambda: the caller reads ``row`` again, the job keeps this one.
        self._ahead.submit(row.id, functools.partial(self._hash_tus, row, committed, started))

    def _hash_tus(self, row, committed, started):
        """tus data below the committed offset never changes: hash up to it."""
        state = self._state(row.id, create=started)
        if state is None:
            return
        with state.lock:
            if state.offset < committed:
                fd = self._open_partial(row, write=False)
                try:
                    state.offset = self._storage.hash_range(fd, state.digest, state.offset, committed,
                                                           release=True)
                finally:
                    os.close(fd)

    def start_of(self, row):
        """(digest, offset): a hash of the first ``offset`` bytes still valid
        for ``row``, or a fresh hash at 0."""
        state = self._state(row.id)
        if state is None:
            return hashlib.sha256(), 0
        with state.lock:
            if row.protocol == "tus":
                return state.digest.copy(), state.offset
            tokens = hashlib.sha256()
            count = 0
            for index, token in (UploadChunk.select(UploadChunk.chunk_index, UploadChunk.token)
                                 .where((UploadChunk.upload == row.id)
                                        & (UploadChunk.chunk_index < state.next_index))
                                 .order_by(UploadChunk.chunk_index).tuples()):
                tokens.update(_token_line(index, token))
                count += 1
            if count == state.next_index and tokens.digest() == state.tokens.digest():
                return state.digest.copy(), state.offset
        return hashlib.sha256(), 0

    def prune(self):
        """Forget hashes of uploads that ended on another head."""
        with self._lock:
            known = list(self._hashes)
        alive = {upload_id for (upload_id,) in Upload.select(Upload.id)
                 .where(Upload.id.in_(known)).tuples()} if known else set()
        for upload_id in known:
            if upload_id not in alive:
                self.drop(upload_id)
