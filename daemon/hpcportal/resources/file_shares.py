"""HTTP side of sharing files: ``/api/v2/files/{file_id}/shares``. Thin: see
``hpcportal.uploads.sharing``."""

import falcon

from .base import read_json


class SharesResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_get(self, req, resp, file_id):
        resp.media = {"shares": self._uploads.shares(req.context.user, file_id)}

    def on_post(self, req, resp, file_id):
        body = read_json(req)
        req.context.audit_target = f"file:{file_id}"
        req.context.audit_detail = {key: body.get(key) for key in ("user", "group") if body.get(key)}
        share, created = self._uploads.share(req.context.user, file_id, body)
        req.context.audit_detail["share"] = share["id"]
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.media = {"share": share}


class ShareResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_delete(self, req, resp, file_id, share_id):
        req.context.audit_target = f"file:{file_id}"
        req.context.audit_detail = {"share": share_id}
        self._uploads.unshare(req.context.user, file_id, share_id)
        resp.status = falcon.HTTP_204


def add_routes(app, *, uploads):
    app.add_route("/api/v2/files/{file_id}/shares", SharesResource(uploads))
    app.add_route("/api/v2/files/{file_id}/shares/{share_id}", ShareResource(uploads))
