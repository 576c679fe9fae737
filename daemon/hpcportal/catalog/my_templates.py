"""Users' own templates through the API: create, save a new version, delete.

A template sent as YAML text is checked exactly as a dropped file is
(``templates.parse_template``), written as ``users/<name>/<local id>/<version>.yaml``
by ``UserTemplateFiles`` (as the user) and indexed at once, so the answer and
every later request already see it. Files a user drops by hand in their folder
are their own templates too: they can be given new versions and deleted alike.
"""

import re

import yaml

from ..errors import Conflict, NotFound, PermissionDenied, ValidationError
from ..models.templates import Template
from . import templates as tpl
from .template_catalog import KIND, MAX_TEMPLATE_BYTES
from .templates.ids import LOCAL_ID

_ID_LINE = "id: {}\n"


def problems_error(message, problems):
    """A 400 naming every problem by its path and line, as ``hpcportald scan`` lists them."""
    errors = {}
    for problem in problems:
        key = problem.get("path") or "yaml"
        text = problem["message"]
        if problem.get("line") and "line " not in text:
            text = f"line {problem['line']}: {text}"
        errors[key] = f"{errors[key]}; {text}" if key in errors else text
    return ValidationError(message, code="invalid_template", errors=errors, extra={"problems": problems})


def local_id_from_name(name):
    """A local id from a display name (``"My run"`` -> ``my-run``); "template" for names
    without a Latin letter or digit (``"결과 분석"``)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", str(name).lower()).strip("-_")[:48]
    return slug or "template"


class _TemplateDumper(yaml.SafeDumper):
    """Multi-line strings (scripts, descriptions) as literal blocks, as people write them;
    PyYAML falls back to quoting where a block cannot hold the text exactly."""


_TemplateDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                                       style="|" if "\n" in value else None))


def to_yaml(document):
    """A template document as the YAML text of a file."""
    return yaml.dump(document, Dumper=_TemplateDumper, sort_keys=False, allow_unicode=True, width=100)


class MyTemplates:
    """``catalog``: the TemplateCatalog; ``indexer``: indexes written files at once;
    ``files``: UserTemplateFiles; ``favourites``: forgets deleted templates."""

    def __init__(self, catalog, indexer, files, favourites):
        self._catalog = catalog
        self._indexer = indexer
        self._files = files
        self._favourites = favourites

    # -- checking ------------------------------------------------------------

    @staticmethod
    def _source(user):
        source = f"{tpl.USERS_SOURCE}/{user.name}"
        try:
            tpl.source_of(source + "/x.yaml")
        except ValueError:
            raise PermissionDenied(f"The user name {user.name!r} cannot own template files "
                                   f"(a-z, 0-9, _ and - only).", code="user_denied") from None
        return source

    @staticmethod
    def _parse(text, relpath):
        if not isinstance(text, str):
            raise ValidationError("The body needs the template as YAML text in 'yaml'.",
                                  errors={"yaml": "required: the template's YAML text"})
        if len(text.encode("utf-8")) > MAX_TEMPLATE_BYTES:
            raise ValidationError(f"The template is larger than {MAX_TEMPLATE_BYTES} bytes.",
                                  errors={"yaml": f"at most {MAX_TEMPLATE_BYTES} bytes"})
        parsed = tpl.parse_template(text, relpath)
        if parsed.errors:
            raise problems_error(f"The template has {len(parsed.errors)} problem(s).", parsed.errors)
        return parsed

    def _final_text(self, text, parsed, local_id, relpath):
        """The text to write: the user's own, with ``id:`` put first when it has none
        (the file's name is its version, not its id), checked to mean the same."""
        if "id" in parsed.document:
            return text
        candidate = _ID_LINE.format(local_id) + text
        again = tpl.parse_template(candidate, relpath)
        if again.errors or again.document != {"id": local_id, **parsed.document}:
            raise ValidationError("Add an 'id:' key to the template (a-z, 0-9, _ and -).",
                                  errors={"id": "required for this template"})
        return candidate

    # -- the API ---------------------------------------------------------------

    def create(self, user, text):
        """A new template of the user's; the template object."""
        source = self._source(user)
        parsed = self._parse(text, f"{source}/template.yaml")
        explicit = "id" in parsed.document
        base = parsed.local_id if explicit else local_id_from_name(parsed.document["name"])
        local_id = base
        taken = self._taken(source)
        if explicit and local_id in taken:
            raise Conflict(f"You have a template {tpl.template_id(source, local_id)!r} already; "
                           f"PUT /api/v2/templates/{tpl.template_id(source, local_id)} saves a new version.",
                           code="template_exists")
        number = 2
        while local_id in taken:
            local_id = f"{base}-{number}"
            number += 1
        return self._save(user, source, local_id, text, parsed)

    def update(self, user, template_id, text):
        """A new version of one of the user's own templates; that version's template object."""
        source, local_id = self._own(user, template_id)
        parsed = self._parse(text, f"{source}/{local_id}.yaml")
        if parsed.local_id != local_id:
            raise ValidationError(f"The template's id is {parsed.document.get('id')!r}; this is {template_id!r}.",
                                  errors={"id": f"must be {local_id!r} or left out"})
        version = parsed.document["version"]
        versions = [v for v, _ in self._catalog.versions_of(template_id)]
        if version in versions:
            raise Conflict(f"{template_id} has a version {version} already ({', '.join(versions)}); "
                           f"save the change as a new version.", code="template_version_exists")
        return self._save(user, source, local_id, text, parsed)

    def delete(self, user, template_id, version=None):
        """Remove the user's own template (every version, or ``version``), files and all."""
        source, _ = self._own(user, template_id)
        rows = Template.select(Template.relpath, Template.version).where(
            (Template.template_id == template_id) & (Template.source == source))
        relpaths = [row.relpath for row in rows if version is None or row.version == version]
        if not relpaths:
            raise NotFound(f"Template {template_id!r} has no version {version!r}.",
                           code="template_version_not_found")
        self._files.remove(user, relpaths)
        self._indexer.index_now(KIND, relpaths)
        if not self._catalog.versions_of(template_id):
            self._favourites.forget(template_id)

    # -- helpers -----------------------------------------------------------------

    def _own(self, user, template_id):
        """``(source, local id)`` of a template that is the user's own; 404 when the
        user does not see it, 403 when it is someone else's or a shared one."""
        if not self._catalog.exists(user, template_id) and not self._invalid_own(user, template_id):
            raise NotFound(f"There is no template {template_id!r}.", code="template_not_found")
        source = self._source(user)
        prefix = source.replace("/", ".") + "."
        local_id = template_id[len(prefix):] if template_id.startswith(prefix) else ""
        if not LOCAL_ID.match(local_id):
            raise PermissionDenied(f"{template_id} is not one of your templates; only your own "
                                   f"(users.{user.name}.*) can be changed.", code="not_your_template")
        return source, local_id

    @staticmethod
    def _invalid_own(user, template_id):
        """A template of the user's whose files are all invalid may still be deleted or fixed."""
        source = f"{tpl.USERS_SOURCE}/{user.name}"
        return Template.select().where((Template.template_id == template_id) & (Template.source == source)).exists()

    @staticmethod
    def _taken(source):
        """Local ids used in the user's folder: by any file, valid or not, or by a folder of versions."""
        rows = Template.select(Template.template_id, Template.relpath).where(Template.source == source)
        prefix = source.replace("/", ".") + "."
        taken = set()
        for row in rows:
            if row.template_id and row.template_id.startswith(prefix):
                taken.add(row.template_id[len(prefix):])
            parts = row.relpath.split("/")
            if len(parts) > 3:
                taken.add(parts[2])
        return taken

    def _save(self, user, source, local_id, text, parsed):
        version = parsed.document["version"]
        relpath = f"{source}/{local_id}/{version}.yaml"
        final = self._final_text(text, parsed, local_id, relpath)
        self._files.write(user, f"{local_id}/{version}.yaml", final)
        self._indexer.index_now(KIND, [relpath])
        template_id = tpl.template_id(source, local_id)
        try:
            return self._catalog.get(user, template_id, version=version)
        except NotFound:
            # Written but not usable: say why (another file took the id and version first).
            problems = [p for item in self._catalog.invalid() if item.get("relpath") == relpath
                        for p in item["errors"]]
            raise Conflict(f"{relpath} was written but cannot be used: "
                           f"{'; '.join(p['message'] for p in problems) or 'it is not in the index'}.",
                           code="template_not_indexed") from None
