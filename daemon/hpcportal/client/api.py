"""``Client``: the portal's HTTP API as Python calls, one method per thing a user does.

Answers are the API's own JSON objects (dicts with the fields docs/api.md names);
every failure is a ``ClientError``. A ``Client`` may be shared between threads.
"""

import os
import re
import threading
import time
from urllib.parse import quote

import requests

from .errors import ClientError, from_response, unreachable
from .follow import follow
from .uploads import ChunkUploader

# States after which a Slurm job never changes again (as the daemon reports them).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                          "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})
_JOB_NAME_LINE = re.compile(r"^#SBATCH\s+.*(--job-name|-J)\b", re.MULTILINE)
_DOWNLOAD_BLOCK = 1024 * 1024


class Client:
    """A client of one portal, acting as the user the token names.

    ``url`` is the daemon's base address (``https://portal.example.org``), ``token`` the
    Auth Portal's access token; ``timeout`` bounds each request's wait for an answer
    (not a whole download or a live stream); ``cache_dir`` is where resumable uploads
    keep their state (default ``$XDG_CACHE_HOME/hpcportal``, else ``~/.cache/hpcportal``)."""

    def __init__(self, url, token, *, timeout=60, cache_dir=None):
        if not url:
            raise ClientError("no portal URL given", code="usage")
        if not token:
            raise ClientError("no token given", code="usage")
        self.url = url.rstrip("/")
        self._token = token.strip()
        self._timeout = timeout
        self._cache_dir = cache_dir
        self._local = threading.local()  # one requests.Session per thread: parallel chunks

    # -- plumbing -------------------------------------------------------------------------------

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self._token}"
            session.headers["User-Agent"] = "hpcportal-client"
        return session

    def request(self, method, path, *, ok=(200,), stream=False, timeout=None, **kwargs):
        """One call; the ``requests`` answer when its status is in ``ok``, else ClientError."""
        try:
            answer = self._session().request(method, self.url + path, stream=stream,
                                             timeout=timeout or self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise unreachable(self.url, exc) from None
        if answer.status_code not in ok:
            try:
                raise from_response(answer)
            finally:
                answer.close()
        return answer

    def _json(self, method, path, **kwargs):
        answer = self.request(method, path, **kwargs)
        try:
            return answer.json()
        except ValueError:
            raise ClientError(f"the portal answered {method} {path} with something that is not JSON "
                              f"(is {self.url} the portal's address?)", status=answer.status_code,
                              code="bad_answer") from None

    # -- who, images, templates -----------------------------------------------------------------

    def me(self):
        """``{"user", "uid", "gid", "groups", "admin"}``: who the token says you are."""
        return self._json("GET", "/api/v2/me")

    def images(self, partition=None):
        """The image catalog (a list), optionally only the images fit for ``partition``."""
        answer = self._json("GET", "/api/v2/apptainer/images", params=_given(partition=partition))
        return _items(answer, "images")

    def image(self, image_id):
        return self._json("GET", f"/api/v2/apptainer/images/{_part(image_id)}")

    def templates(self, category=None, source=None):
        """The job templates (a list, newest version of each)."""
        answer = self._json("GET", "/api/v2/templates", params=_given(category=category, source=source))
        return _items(answer, "templates")

    def template(self, template_id):
        return self._json("GET", f"/api/v2/templates/{_part(template_id)}")

    # -- files ----------------------------------------------------------------------------------

    def upload(self, path, job_id=None, progress=None, *, chunk_size=None, parallel=4, state_dir=None):
        """Upload the file at ``path`` through the chunk protocol; the file object the API
        answers (``file_id``, ``storage_path``, ``sha256``, ...).

        Resumable: the upload's id is kept under the user's cache folder
        (``$XDG_CACHE_HOME/hpcportal/uploads``, else ``~/.cache/hpcportal/uploads``), so
        calling again for the same unchanged file, after a crash or a lost connection,
        sends only the chunks the portal does not have. ``parallel`` chunks are in flight
        at once. ``progress(done_bytes, total_bytes)`` is called as chunks are acknowledged."""
        state_dir = state_dir or os.path.join(self._cache_dir or default_cache_dir(), "uploads")
        uploader = ChunkUploader(self, state_dir)
        return uploader.upload(path, job_id=job_id, progress=progress, chunk_size=chunk_size,
                               parallel=parallel)

    def files(self, job_id=None, file_type=None, limit=None, offset=None):
        """Your uploaded files (a list, newest first)."""
        params = _given(job_id=job_id, file_type=file_type, limit=limit, offset=offset)
        return _items(self._json("GET", "/api/v2/files", params=params), "files")

    def file(self, file_id):
        return self._json("GET", f"/api/v2/files/{_part(file_id)}")

    def delete_file(self, file_id):
        self.request("DELETE", f"/api/v2/files/{_part(file_id)}", ok=(204,))

    def download(self, file_id, dest=None, progress=None):
        """Save an uploaded file to ``dest`` (a path or folder; default: its own name in the
        current folder); the path written."""
        if dest is None or os.path.isdir(dest):
            name = self.file(file_id)["filename"]
            dest = os.path.join(dest or ".", name)
        return self._save(f"/api/v2/files/{_part(file_id)}/content", dest, progress)

    def job_files(self, job_id):
        """The files in a job's folder (its results), sub-folders included."""
        return _items(self._json("GET", f"/api/slurm/jobs/{_part(job_id)}/files"), "files")

    def download_result(self, job_id, path, dest=None, progress=None):
        """Save one file of a job's folder (``path`` relative to it, e.g. ``out/result.csv``)."""
        if dest is None or os.path.isdir(dest):
            dest = os.path.join(dest or ".", os.path.basename(path.rstrip("/")))
        parts = "/".join(_part(piece) for piece in path.split("/"))
        return self._save(f"/api/slurm/jobs/{_part(job_id)}/files/{parts}", dest, progress)

    def _save(self, path, dest, progress):
        # Written beside the destination and renamed: an interrupted download leaves no
        # half file under the real name.
        partial = f"{dest}.part"
        with self.request("GET", path, stream=True) as answer:
            total = int(answer.headers.get("Content-Length") or 0)
            done = 0
            with open(partial, "wb") as out:
                try:
                    for block in answer.iter_content(_DOWNLOAD_BLOCK):
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                except requests.RequestException as exc:
                    raise unreachable(self.url, exc) from None
        if total and done != total:
            raise ClientError(f"the download of {dest} stopped after {done} of {total} bytes; try again",
                              code="incomplete")
        os.replace(partial, dest)
        return dest

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, script=None, *, name=None, partition=None, nodes=None, cpus=None, memory=None,
               time=None, account=None, qos=None, gpus=None, image=None, files=(), template=None,
               template_version=None, parameters=None, job_id=None, **extra):
        """Submit a job; the API's answer ``{"success", "jobId", "message", "submissionId"}``.

        ``script`` is the script's text. ``files`` are file ids of your uploads, or
        ``(slot, file_id)`` pairs for a template's named files. ``image`` is a catalog
        image id; ``template`` a template id with its ``parameters``. ``extra`` fields
        are sent as given (API names)."""
        body = _given(jobName=name, partition=partition, nodes=nodes, cpus=cpus, memory=memory,
                      time=time, account=account, qos=qos, gpus=gpus, jobId=job_id,
                      templateId=template, templateVersion=template_version)
        if script is not None:
            body["script"] = script
        if image:
            body["apptainerImage"] = {"id": image}
        if parameters:
            body["parameters"] = dict(parameters)
        entries = []
        for item in files or ():
            if isinstance(item, (tuple, list)):
                entries.append({"name": item[0], "file_id": item[1]})
            else:
                entries.append({"file_id": item})
        if entries:
            body["files"] = entries
        body.update(extra)
        return self._json("POST", "/api/slurm/jobs/submit", json=body)

    @staticmethod
    def names_itself(script):
        """Whether a script names its job in its own ``#SBATCH`` lines."""
        return bool(_JOB_NAME_LINE.search(script or ""))

    def jobs(self, state=None, limit=None, offset=None, all_users=False):
        """Your jobs (a list, newest first); ``state`` like ``"RUNNING,PENDING"``."""
        params = _given(state=state, limit=limit, offset=offset, all="true" if all_users else None)
        return _items(self._json("GET", "/api/slurm/jobs", params=params), "jobs")

    def job(self, job_id):
        """One job: state, exit code, script, image, files and output paths."""
        return self._json("GET", f"/api/slurm/jobs/{_part(job_id)}")

    def cancel(self, job_id):
        """Cancel a job (scancel as you); the API's answer."""
        return self._json("DELETE", f"/api/slurm/jobs/{_part(job_id)}")

    def wait(self, job_id, interval=2.0, timeout=None, on_change=None):
        """Poll until the job has ended; the finished job. ``on_change(job)`` is called
        when its state changes. ``timeout`` (seconds) raises ClientError ``wait_timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            job = self.job(job_id)
            if on_change and job.get("state") != seen:
                seen = job.get("state")
                on_change(job)
            if job.get("state") in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise ClientError(f"job {job_id} is still {job.get('state')} after {timeout:g} s",
                                  code="wait_timeout")
            time.sleep(interval)

    def output(self, job_id, stream="stdout", offset=0, limit=None):
        """One slice of a job's output: ``{"data", "offset", "next_offset", "eof", "state"}``."""
        params = _given(stream=stream, offset=offset, limit=limit)
        return self._json("GET", f"/api/slurm/jobs/{_part(job_id)}/output", params=params)

    def logs(self, job_id, stream="stdout"):
        """The job's whole output so far, as text."""
        offset, pieces = 0, []
        while True:
            piece = self.output(job_id, stream=stream, offset=offset)
            pieces.append(piece.get("data") or "")
            if piece["next_offset"] == offset or piece.get("eof"):
                return "".join(pieces)
            offset = piece["next_offset"]

    def follow(self, job_id, stream="stdout", offset=0, poll_interval=2.0):
        """The job's output as it is written (an iterator of text), until the job has ended
        and everything was read. Uses the live stream and reconnects where it left off;
        polls instead while the portal has no stream to spare (429)."""
        return follow(self, job_id, stream=stream, offset=offset, poll_interval=poll_interval)


def _given(**values):
    return {key: value for key, value in values.items() if value is not None}


def _items(answer, key):
    return answer[key] if isinstance(answer, dict) and key in answer else answer


def _part(value):
    """One URL path segment: ids come from users, so nothing in them may add a segment."""
    return quote(str(value), safe="")


def default_cache_dir():
    """``$XDG_CACHE_HOME/hpcportal``, else ``~/.cache/hpcportal``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpcportal")
