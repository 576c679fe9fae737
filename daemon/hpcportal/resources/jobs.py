"""HTTP resources of job submission and monitoring: /api/slurm/..."""

import os
import re
import urllib.parse

from ..errors import ValidationError
from .base import MAX_INTEGER, bool_param, int_param, paging, read_json
from .downloads import send_file



class SubmitResource:
    def __init__(self, service, max_body, rate_limits=None):
        self._service = service
        self._max_body = max_body
        self._rate_limits = rate_limits

    def on_post(self, req, resp):
        if self._rate_limits is not None:
            self._rate_limits.check(req.context.user, "submit")
        body = read_json(req, max_size=self._max_body)
        answer = self._service.submit(req.context.user, body)
        req.context.audit_target = f"job {answer['jobId']}"
        req.context.audit_detail = {"submission": answer["submissionId"]}
        resp.media = answer


class JobsResource:
    def __init__(self, service):
        self._service = service

    def on_get(self, req, resp):
        limit, offset = paging(req)
        state = req.get_param("state")
        if state is not None and not re.fullmatch(r"[A-Za-z_,]{1,200}", state):
            raise ValidationError("Query parameter 'state' must be Slurm state names separated by commas.",
                                  errors={"state": "must be state names such as RUNNING,PENDING"})
        resp.media = self._service.list(req.context.user, all_users=bool_param(req, "all"), state=state,
                                        limit=limit, offset=offset)

    def on_get_item(self, req, resp, job_id):
        resp.media = self._service.detail(req.context.user, job_id)

    def on_delete_item(self, req, resp, job_id):
        req.context.audit_target = f"job {job_id}"
        resp.media = self._service.cancel(req.context.user, job_id)


class OutputResource:
    def __init__(self, output):
        self._output = output

    def on_get(self, req, resp, job_id):
        stream = req.get_param("stream") or "stdout"
        offset = int_param(req, "offset", 0, 0)
        accept = (req.get_header("Accept") or "").lower()
        if "text/event-stream" in accept:
            last = req.get_header("Last-Event-ID")
            if last is not None:
                # isdigit() alone lets "²" and numbers int() refuses through.
                if not re.fullmatch(r"[0-9]{1,19}", last.strip()) or int(last.strip()) > MAX_INTEGER:
                    raise ValidationError("Last-Event-ID must be a byte offset (a non-negative "
                                          f"integer up to {MAX_INTEGER}).",
                                          errors={"Last-Event-ID": "not an offset"})
                offset = int(last.strip())
            events = self._output.stream(req.context.user, job_id, stream, offset)
            resp.content_type = "text/event-stream"
            resp.set_header("Cache-Control", "no-cache")
            resp.set_header("X-Accel-Buffering", "no")
            resp.stream = events
            return
        limit = int_param(req, "limit", None, 1)
        resp.media = self._output.slice(req.context.user, job_id, stream, offset, limit)


class FilesResource:
    def __init__(self, results):
        self._results = results

    def on_get(self, req, resp, job_id):
        row, files, truncated = self._results.list(req.context.user, job_id)
        for item in files:
            item["url"] = f"/api/slurm/jobs/{row.slurm_job_id}/files/{urllib.parse.quote(item['path'], safe='/')}"
            item["modified"] = _iso(item["modified"])
        resp.media = {"jobId": row.slurm_job_id, "job_dir": row.job_dir, "files": files, "truncated": truncated}

    def on_get_item(self, req, resp, job_id, path):
        _, fd = self._results.open(req.context.user, job_id, path)
        info = os.fstat(fd)
        send_file(req, resp, fd, etag=f'"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}"',
                  filename=path.rsplit("/", 1)[-1])


class PartitionsResource:
    def __init__(self, service):
        self._service = service

    def on_get(self, req, resp):
        resp.media = {"partitions": self._service.partitions()}


class AssociationsResource:
    def __init__(self, service):
        self._service = service

    def on_get(self, req, resp):
        resp.media = self._service.associations(req.context.user)


def _iso(timestamp):
    import datetime
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).replace(
        tzinfo=None, microsecond=0).isoformat() + "Z"


def add_routes(app, *, service, output, files, rate_limits, max_json_body, max_script_size):
    jobs = JobsResource(service)
    # A script may be up to slurm.max_script_size; JSON escaping may double it.
    max_body = max(max_json_body, 2 * max_script_size + 65536)
    app.add_route("/api/slurm/jobs/submit", SubmitResource(service, max_body, rate_limits))
    app.add_route("/api/slurm/jobs", jobs)
    app.add_route("/api/slurm/jobs/{job_id}", jobs, suffix="item")
    app.add_route("/api/slurm/jobs/{job_id}/output", OutputResource(output))
    folder = FilesResource(files)
    app.add_route("/api/slurm/jobs/{job_id}/files", folder)
    # A path with its slashes ("out/sub/a.txt"); a single name is the old form of it.
    app.add_route("/api/slurm/jobs/{job_id}/files/{path:path}", folder, suffix="item")
    app.add_route("/api/slurm/partitions", PartitionsResource(service))
    app.add_route("/api/slurm/associations", AssociationsResource(service))
