"""Resumable uploads through the chunk protocol: init, parallel chunks, complete.

The upload's id is written to a small state file as soon as the portal gives it,
keyed by the portal, the file's absolute path, size and modification time; the
next upload of the same unchanged file asks the portal which chunks it already
has (``GET /upload/{id}``) and sends only the others.
"""

import hashlib
import json
import os
import stat
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from .errors import ClientError

# Answers worth another try of the same chunk: the network, a busy or restarting head.
# Six tries over about 23 s ride out a daemon's restart; after that the command says so.
_RETRY_STATUSES = {409, 429, 500, 502, 503, 504, 507}
_ATTEMPTS = 6


class ChunkUploader:
    """Uploads files for one ``Client``; ``state_dir`` holds one JSON file per unfinished upload."""

    def __init__(self, client, state_dir, sleep=time.sleep):
        self._client = client
        self._state_dir = state_dir
        self._sleep = sleep

    def upload(self, path, job_id=None, progress=None, chunk_size=None, parallel=4):
        path = os.path.abspath(path)
        try:
            info = os.stat(path)
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror}", code="local_file") from None
        if not stat.S_ISREG(info.st_mode):
            raise ClientError(f"{path} is not a regular file", code="local_file")
        state_path = self._state_path(path, info, job_id, chunk_size)
        upload, received = self._resume(state_path)
        if upload is None:
            upload, received = self._start(path, info.st_size, job_id, chunk_size, state_path)
        elif "file" in upload:
            _forget(state_path)
            return upload["file"]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror}", code="local_file") from None
        try:
            self._send(fd, upload, received, progress, max(1, int(parallel)))
        finally:
            os.close(fd)
        answer = self._client.request("POST", "/api/v2/files/upload/complete",
                                      json={"upload_id": upload["upload_id"]}, ok=(200, 201))
        _forget(state_path)
        return answer.json()

    # -- state ----------------------------------------------------------------------------------

    def _state_path(self, path, info, job_id, chunk_size):
        key = json.dumps([self._client.url, path, info.st_size, info.st_mtime_ns, job_id, chunk_size])
        return os.path.join(self._state_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _resume(self, state_path):
        """(upload, received chunk indexes) of an earlier try, or (None, None)."""
        try:
            with open(state_path, encoding="utf-8") as handle:
                saved = json.load(handle)
            upload_id = saved["upload_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, None
        answer = self._client.request("GET", f"/api/v2/files/upload/{upload_id}", ok=(200, 404, 410))
        if answer.status_code == 200:
            status = answer.json()
            return ({"upload_id": upload_id, "chunk_size": status["chunk_size"],
                     "total_chunks": status["total_chunks"], "size": status["size"], "resumed": True},
                    set(status["received_chunks"]))
        # Gone: finished by an earlier try whose answer was lost (completing again gives the
        # file), or expired (start again).
        done = self._client.request("POST", "/api/v2/files/upload/complete", json={"upload_id": upload_id},
                                    ok=(200, 201, 404, 409, 410))
        if done.status_code in (200, 201):
            return {"file": done.json()}, None
        _forget(state_path)
        return None, None

    def _start(self, path, size, job_id, chunk_size, state_path):
        body = {"filename": os.path.basename(path), "size": size}
        if job_id:
            body["job_id"] = job_id
        if chunk_size:
            body["chunk_size"] = int(chunk_size)
        init = self._client.request("POST", "/api/v2/files/upload/init", json=body, ok=(200, 201)).json()
        upload = {"upload_id": init["upload_id"], "chunk_size": init["chunk_size"],
                  "total_chunks": init["total_chunks"], "size": size, "resumed": False}
        _save(state_path, {**upload, "url": self._client.url, "path": path, "job_id": job_id})
        return upload, set(init.get("received_chunks") or ())

    # -- chunks ---------------------------------------------------------------------------------

    def _send(self, fd, upload, received, progress, parallel):
        size, chunk = upload["size"], upload["chunk_size"]
        missing = [i for i in range(upload["total_chunks"]) if i not in received]
        lock = threading.Lock()
        done = [size - sum(_length(i, chunk, size) for i in missing)]
        if progress:
            progress(done[0], size)

        def send(index):
            length = _length(index, chunk, size)
            data = os.pread(fd, length, index * chunk)
            if len(data) != length:
                raise ClientError("the file changed while it was uploaded; upload it again",
                                  code="local_file")
            self._chunk(upload["upload_id"], index, data)
            with lock:
                done[0] += length
                if progress:
                    progress(done[0], size)

        if not missing:
            return
        with ThreadPoolExecutor(max_workers=min(parallel, len(missing)),
                                thread_name_prefix="hpcportal-chunk") as pool:
            futures = [pool.submit(send, index) for index in missing]
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                # A failure or Ctrl-C stops at the chunks in flight; the rest waits for a resume.
                for future in futures:
                    future.cancel()
            failed = [f for f in finished if f.exception() is not None]
            if failed:
                raise failed[0].exception()

    def _chunk(self, upload_id, index, data):
        params = {"upload_id": upload_id, "chunk_index": index,
                  "chunk_sha256": hashlib.sha256(data).hexdigest()}
        headers = {"Content-Type": "application/octet-stream"}
        for attempt in range(_ATTEMPTS):
            try:
                self._client.request("POST", "/api/v2/files/upload/chunk", params=params, data=data,
                                     headers=headers)
                return
            except ClientError as exc:
                retry = exc.code == "unreachable" or exc.status in _RETRY_STATUSES
                if not retry or attempt == _ATTEMPTS - 1:
                    raise
            self._sleep(min(8, 2 ** attempt))


def _length(index, chunk, size):
    return min(chunk, size - index * chunk)


def _save(path, state):
    """Written whole or not at all, readable by its owner only (it names the user's files)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(state, handle, ensure_ascii=False)
    os.replace(temporary, path)


def _forget(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
