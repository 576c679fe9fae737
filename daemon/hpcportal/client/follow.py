"""Following a job's output: the live stream (server-sent events), resumed where it left off.

The stream ends with ``end`` once the job has ended and everything was sent; a
``timeout`` (the portal's ``slurm.stream_max_duration``) or a dropped connection
is resumed from the last offset; while the portal has no stream to spare (429)
the output is polled instead.
"""

import json
import time
from urllib.parse import quote

import requests

from .errors import ClientError

# The portal sends a heartbeat every 15 s by default: a minute of silence is a dead connection.
_READ_TIMEOUT = 75
_RECONNECTS = 5


def follow(client, job_id, stream="stdout", offset=0, poll_interval=2.0, sleep=time.sleep):
    """An iterator of the job's output text from byte ``offset`` until the job has ended."""
    path = f"/api/slurm/jobs/{quote(str(job_id), safe='')}/output"
    failures = 0
    while True:
        try:
            answer = client.request("GET", path, params={"stream": stream, "offset": offset},
                                    headers={"Accept": "text/event-stream"}, stream=True, ok=(200, 429),
                                    timeout=(10, _READ_TIMEOUT))
        except ClientError as exc:
            failures += 1
            if exc.code != "unreachable" or failures > _RECONNECTS:
                raise
            sleep(min(10, 2 ** failures))
            continue
        if answer.status_code == 429:
            answer.close()
            ended, offset = yield from _poll_once(client, job_id, stream, offset)
            if ended:
                return
            sleep(poll_interval)
            continue
        try:
            with answer:
                for kind, payload in _events(answer):
                    failures = 0
                    if kind == "output":
                        offset = payload["next_offset"]
                        if payload.get("data"):
                            yield payload["data"]
                    elif kind == "end":
                        return
                    elif kind == "error":
                        raise ClientError(payload.get("message") or "the output stream was refused",
                                          code=payload.get("error") or "stream_error")
                    elif kind == "timeout":
                        offset = payload.get("next_offset", offset)
                        break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
            failures += 1
            if failures > _RECONNECTS:
                raise ClientError(f"lost the output stream of job {job_id} from {client.url}",
                                  code="unreachable") from None
            sleep(min(10, 2 ** failures))


def _poll_once(client, job_id, stream, offset):
    """Read what is there by slices; (whether the job has ended and all was read, new offset)."""
    while True:
        piece = client.output(job_id, stream=stream, offset=offset)
        if piece.get("data"):
            yield piece["data"]
        if piece.get("eof"):
            return True, piece["next_offset"]
        if piece["next_offset"] == offset:
            return False, offset
        offset = piece["next_offset"]


def _events(answer):
    """(event name, decoded data) of each event of a server-sent event stream."""
    kind, data = None, []
    for raw in answer.iter_lines():
        line = raw.decode("utf-8")
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = {}
                yield kind or "message", payload
            kind, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
