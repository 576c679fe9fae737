"""A job's output: slices for polling and a bounded live stream (server-sent events).

Output files are opened through ``JobFolders.open_file`` (no symlinks, owned by
the job's user). Offsets are byte offsets; a slice never ends inside a UTF-8
character, so the next slice starts on a character boundary.
"""

import codecs
import json
import logging
import os
import threading
import time

from ..errors import NotFound, RateLimited, UnsafePath, ValidationError
from ..slurm.parse import FINAL_STATES
from ..slurm.runner import SlurmUnavailable
from .listing import open_output
from .service import owner_of

log = logging.getLogger("hpcportal.jobs")

STREAMS = ("stdout", "stderr")


def read_slice(fd, offset, limit):
    """(text, next_offset, size) of up to ``limit`` bytes at ``offset``."""
    size = os.fstat(fd).st_size
    if offset >= size:
        return "", offset, size
    raw = os.pread(fd, limit, offset)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(raw, final=False)
    # Bytes of a character cut by the slice's end are left for the next slice.
    pending = len(decoder.getstate()[0])
    return text, offset + len(raw) - pending, size


class JobOutput:
    def __init__(self, service, *, max_slice, max_streams, max_streams_per_user, max_duration, heartbeat,
                 stopping, metrics=None, poll=0.5, clock=time.monotonic):
        self._service = service
        self._max_slice = max_slice
        self._streams = threading.BoundedSemaphore(max_streams) if max_streams else None
        # Each stream holds a worker thread: one user must not take every stream of the head.
        self._max_per_user = max_streams_per_user
        self._per_user = {}
        self._per_user_lock = threading.Lock()
        self._max_duration = max_duration
        self._heartbeat = heartbeat
        self._stopping = stopping
        self._metrics = metrics
        self._poll = poll
        self._clock = clock

    def _path_name(self, row, stream):
        if stream not in STREAMS:
            raise ValidationError("stream must be stdout or stderr.", errors={"stream": "must be stdout or stderr"})
        path = row.stdout_path if stream == "stdout" else row.stderr_path
        return os.path.basename(path or "")

    def _open(self, row, stream):
        if row.submission_id is None:  # a job the portal did not submit: its own output path
            return open_output(owner_of(row), row.stdout_path if stream == "stdout" else row.stderr_path)
        return self._service.folders.open_file(owner_of(row), row.submission_id, self._path_name(row, stream))

    def _state(self, row):
        try:
            live = self._service.live_state(row)
        except SlurmUnavailable:
            live = None
        return (live or {}).get("state") or row.state, live

    def slice(self, user, job_id, stream="stdout", offset=0, limit=None):
        return self._slice(self._service.row_for(user, job_id), stream, offset, limit)

    def _slice(self, row, stream, offset, limit):
        self._path_name(row, stream)
        limit = min(limit or self._max_slice, self._max_slice)
        state, _ = self._state(row)
        try:
            fd = self._open(row, stream)
        except NotFound:
            return {"jobId": row.slurm_job_id, "stream": stream, "data": "", "offset": offset,
                    "next_offset": offset, "eof": state in FINAL_STATES, "state": state}
        try:
            text, next_offset, size = read_slice(fd, offset, limit)
        finally:
            os.close(fd)
        return {"jobId": row.slurm_job_id, "stream": stream, "data": text, "offset": offset,
                "next_offset": next_offset, "size": size,
                "eof": state in FINAL_STATES and next_offset >= size, "state": state}

    def stream(self, user, job_id, stream="stdout", offset=0):
        """An iterator of server-sent events; raises RateLimited when too many are open."""
        row = self._service.row_for(user, job_id)
        self._path_name(row, stream)
        self._take_user_stream(user.name)
        if self._streams is None or not self._streams.acquire(blocking=False):
            self._give_user_stream(user.name)
            raise RateLimited("Too many live output streams are open; poll the output instead or retry shortly.",
                              retry_after=5, code="too_many_streams")
        if self._metrics:
            self._metrics.streams.inc()
        return self._events(user, row, stream, offset)

    def _take_user_stream(self, name):
        with self._per_user_lock:
            held = self._per_user.get(name, 0)
            if held >= self._max_per_user:
                raise RateLimited(
                    f"You have {held} live output streams open, the most one user may have; close one, "
                    "poll the output instead or retry shortly.", retry_after=5, code="too_many_streams",
                    extra={"limit": self._max_per_user})
            self._per_user[name] = held + 1

    def _give_user_stream(self, name):
        with self._per_user_lock:
            held = self._per_user.get(name, 0) - 1
            if held > 0:
                self._per_user[name] = held
            else:
                self._per_user.pop(name, None)

    def _events(self, user, row, stream, offset):
        try:
            yield b"retry: 2000\n\n"
            started = last_sent = self._clock()
            while not self._stopping.is_set():
                # The row was checked once; polling reads only the file and the shared squeue snapshot.
                try:
                    answer = self._slice(row, stream, offset, self._max_slice)
                except UnsafePath as exc:  # the answer has begun: the refusal is its last event
                    log.warning("job %s: output stream refused: %s", row.slurm_job_id, exc.message)
                    yield _event("error", offset, {"error": exc.code, "message": exc.message})
                    return
                if answer["next_offset"] > offset:
                    offset = answer["next_offset"]
                    last_sent = self._clock()
                    yield _event("output", offset, {"data": answer["data"], "offset": answer["offset"],
                                                    "next_offset": offset})
                    continue
                if answer["eof"]:
                    yield _event("end", offset, {"state": answer["state"], "next_offset": offset})
                    return
                now = self._clock()
                # Heartbeat first: a slow poll must not skip it on the way to the time limit.
                if now - last_sent >= self._heartbeat:
                    last_sent = now
                    yield b": heartbeat\n\n"
                if now - started >= self._max_duration:
                    yield _event("timeout", offset, {"next_offset": offset,
                                                     "message": "Stream time limit reached; reconnect to resume."})
                    return
                self._stopping.wait(self._poll)
        finally:
            if self._metrics:
                self._metrics.streams.dec()
            self._streams.release()
            self._give_user_stream(user.name)


def _event(kind, event_id, payload):
    data = json.dumps(payload, separators=(",", ":"))
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n".encode("utf-8")
