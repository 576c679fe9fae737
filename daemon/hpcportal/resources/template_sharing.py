"""Templates made from jobs, and proposals of users' templates to ``community/``:
thin HTTP over ``jobs.as_template`` and ``catalog.proposals``."""

import falcon

from .base import read_json


class JobTemplateResource:
    """POST /api/slurm/jobs/{job_id}/template: the job as a new template of the caller's."""

    def __init__(self, job_templates):
        self._job_templates = job_templates

    def on_post(self, req, resp, job_id):
        req.context.audit_target = f"job:{job_id}"
        body = read_json(req, required=False)
        item = self._job_templates.save(req.context.user, job_id, name=body.get("name"))
        req.context.audit_detail = {"template": item["id"], "version": item["version"]}
        resp.status = falcon.HTTP_201
        resp.set_header("Location", f"/api/v2/templates/{item['id']}")
        resp.media = item


def add_routes(app, *, job_templates):
    app.add_route("/api/slurm/jobs/{job_id}/template", JobTemplateResource(job_templates))
