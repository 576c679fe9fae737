"""/api/v2/templates: thin HTTP over catalog.template_catalog."""

import falcon

from ..catalog import template_catalog as catalogmod
from ..catalog import templates as tpl
from ..errors import ValidationError
from .base import MAX_LIMIT, answer_cacheable, bool_param, int_param, read_json
from .scan import ScanResource

MAX_AGE = 300  # the dashboard caches the list for 5 minutes


def _text_param(req, name, max_length=200):
    value = (req.get_param(name) or "").strip()
    if len(value) > max_length:
        raise ValidationError(f"Query parameter '{name}' is too long.", errors={name: "too long"})
    return value or None


def _version_param(req):
    version = _text_param(req, "version", 128)
    if version is not None:
        try:
            tpl.parse_semver(version)
        except ValueError as exc:
            raise ValidationError(f"Query parameter 'version': {exc}.",
                                  errors={"version": "not a semantic version"}) from None
    return version


class TemplatesResource:
    """The list and one template; ``mine`` (MyTemplates) creates, versions and deletes users' own."""

    def __init__(self, catalog, mine):
        self._catalog = catalog
        self._mine = mine

    def on_get(self, req, resp):
        include_invalid = bool_param(req, "include_invalid", False)
        # No limit by default, like the image list: the dashboard does not page, it caches the whole list.
        limit = int_param(req, "limit", None, 1, MAX_LIMIT)
        offset = int_param(req, "offset", 0, 0)
        items, total = self._catalog.list(
            req.context.user, category=_text_param(req, "category"), source=_text_param(req, "source"),
            tag=_text_param(req, "tag"), q=_text_param(req, "q"), image=_text_param(req, "image"),
            include_invalid=include_invalid, limit=limit, offset=offset,
            favourite=bool_param(req, "favourite", None))
        answer_cacheable(req, resp, {"templates": items, "total": total}, max_age=MAX_AGE)

    def on_get_item(self, req, resp, template_id):
        item = self._catalog.get(req.context.user, template_id, version=_version_param(req))
        answer_cacheable(req, resp, item, max_age=MAX_AGE)

    def on_post(self, req, resp):
        body = read_json(req)
        item = self._mine.create(req.context.user, body.get("yaml"))
        req.context.audit_target = item["id"]
        req.context.audit_detail = {"version": item["version"]}
        resp.status = falcon.HTTP_201
        resp.set_header("Location", f"/api/v2/templates/{item['id']}")
        resp.media = item

    def on_put_item(self, req, resp, template_id):
        req.context.audit_target = template_id
        body = read_json(req)
        item = self._mine.update(req.context.user, template_id, body.get("yaml"))
        req.context.audit_detail = {"version": item["version"]}
        resp.media = item

    def on_delete_item(self, req, resp, template_id):
        req.context.audit_target = template_id
        version = _version_param(req)
        self._mine.delete(req.context.user, template_id, version=version)
        req.context.audit_detail = {"version": version} if version else None
        resp.status = falcon.HTTP_204


class FavouriteResource:
    """PUT marks a template as the caller's favourite, DELETE unmarks it; both answer the template."""

    def __init__(self, catalog):
        self._catalog = catalog

    def on_put(self, req, resp, template_id):
        req.context.audit_target = template_id
        resp.media = self._catalog.set_favourite(req.context.user, template_id, True)

    def on_delete(self, req, resp, template_id):
        req.context.audit_target = template_id
        resp.media = self._catalog.set_favourite(req.context.user, template_id, False)


class SchemaResource:
    def on_get(self, req, resp):
        answer_cacheable(req, resp, tpl.schema(), max_age=3600)


class RenderResource:
    def __init__(self, catalog, config):
        self._catalog = catalog
        self._config = config

    def on_post(self, req, resp, template_id):
        body = read_json(req, required=False)
        user = req.context.user
        req.context.audit_target = template_id
        # The same job folder layout, binds and apptainer command as a submit.
        result = self._catalog.render(
            user, template_id, body, version=_version_param(req),
            job_dir=catalogmod.job_dir_preview(self._config.paths.uploads, user.name),
            apptainer_command=self._config.slurm.apptainer,
            extra_binds=tuple(getattr(self._config.slurm, "apptainer_binds", ())),
            bind_file_folders=True)
        resp.media = {"success": True, **result}


def add_routes(app, *, catalog, mine, indexer, rate_limits, config):
    templates = TemplatesResource(catalog, mine)
    # The schema route is added before {template_id} so "schema" is never taken for an id.
    app.add_route("/api/v2/templates/schema", SchemaResource())
    app.add_route("/api/v2/templates", templates)
    app.add_route("/api/v2/templates/scan", ScanResource(indexer, catalog.kind, rate_limits))
    app.add_route("/api/v2/templates/{template_id}", templates, suffix="item")
    app.add_route("/api/v2/templates/{template_id}/render",
                  RenderResource(catalog, config))
    app.add_route("/api/v2/templates/{template_id}/favourite", FavouriteResource(catalog))
