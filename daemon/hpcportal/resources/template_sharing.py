"""Templates made from jobs, and proposals of users' templates to ``community/``:
thin HTTP over ``jobs.as_template`` and ``catalog.proposals``."""

import falcon

from .base import read_json, require_admin


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


class PublishResource:
    """POST /api/v2/templates/{id}/publish: propose one's own template for community/."""

    def __init__(self, proposals):
        self._proposals = proposals

    def on_post(self, req, resp, template_id):
        req.context.audit_target = template_id
        body = read_json(req, required=False)
        version = body.get("version")
        if version is not None and not isinstance(version, str):
            version = str(version)
        proposal = self._proposals.propose(req.context.user, template_id, version=version,
                                           message=body.get("message"))
        req.context.audit_detail = {"proposal": proposal["id"], "version": proposal["version"]}
        resp.status = falcon.HTTP_201
        resp.media = {"proposal": proposal}


class ProposalsResource:
    """The proposals: every one for administrators, one's own for users."""

    def __init__(self, proposals):
        self._proposals = proposals

    def on_get(self, req, resp):
        items = self._proposals.list(req.context.user, status=req.get_param("status") or None)
        resp.media = {"proposals": items, "total": len(items)}

    def on_get_item(self, req, resp, proposal_id):
        resp.media = {"proposal": self._proposals.get(req.context.user, proposal_id)}

    def on_post_approve(self, req, resp, proposal_id):
        req.context.audit_target = f"proposal:{proposal_id}"
        proposal = self._proposals.approve(require_admin(req), proposal_id)
        req.context.audit_detail = {"template": proposal["template_id"], "version": proposal["version"],
                                    "community_id": proposal["community_id"], "decision": "approved"}
        resp.media = {"proposal": proposal}

    def on_post_reject(self, req, resp, proposal_id):
        req.context.audit_target = f"proposal:{proposal_id}"
        admin = require_admin(req)
        body = read_json(req)
        proposal = self._proposals.reject(admin, proposal_id, body.get("reason"))
        req.context.audit_detail = {"template": proposal["template_id"], "version": proposal["version"],
                                    "decision": "rejected"}
        resp.media = {"proposal": proposal}


def add_routes(app, *, job_templates, proposals):
    app.add_route("/api/slurm/jobs/{job_id}/template", JobTemplateResource(job_templates))
    app.add_route("/api/v2/templates/{template_id}/publish", PublishResource(proposals))
    reviews = ProposalsResource(proposals)
    app.add_route("/api/v2/templates/proposals", reviews)
    app.add_route("/api/v2/templates/proposals/{proposal_id}", reviews, suffix="item")
    app.add_route("/api/v2/templates/proposals/{proposal_id}/approve", reviews, suffix="approve")
    app.add_route("/api/v2/templates/proposals/{proposal_id}/reject", reviews, suffix="reject")
