"""The template catalog: the indexer kind for template files, and the queries
the API answers (listing with filters, versions, visibility, readiness, render).

Template files are indexed like images (see ``indexer``): ``TemplateKind``
parses each file with ``templates.parse_template`` and stores it, valid or not,
with its problems. ``TemplateCatalog`` builds an in-memory snapshot of the index
(grouped by id, versions sorted by semver, each template's image resolved
against the image catalog) and rebuilds it only when the template or the image
index changed, in this daemon or in another (``catalog_generations``). So
``ready`` is re-evaluated as soon as images come and go.

For job submission: the job service is given the ``TemplateCatalog``;
``render(user, template_id, request, version=..., job_dir=<the job folder>,
apptainer_command=config.slurm.apptainer, extra_binds=...)`` checks the values
and returns the batch script, the environment, the image and (for container
templates) the ``body`` to save byte for byte at ``body_path``.
"""

import fnmatch
import logging
import posixpath
import threading
from dataclasses import dataclass, field

from ..errors import NotFound, PermissionDenied, UnsafePath, ValidationError
from ..models.base import isoformat
from ..models.templates import Template
from ..slurm.script import input_path
from . import templates as tpl
from .index_store import ModelKind, generation
from .kinds import InvalidFile
from .template_files import is_user_file, read_user_file

log = logging.getLogger("hpcportal.catalog.templates")

MAX_TEMPLATE_BYTES = 1024 * 1024
# Stands for the submission id in a rendered script's job folder.
PREVIEW_SUBMISSION = "submission-id"
KIND = "templates"


class TemplateKind(ModelKind):
    """Indexer kind for ``<templates root>/<source>/.../*.yaml``."""

    name = KIND
    model = Template

    def __init__(self, database, root):
        super().__init__(database)
        self.root = root
        # parse() and store() of one file run back to back in the indexer's
        # thread: parse leaves the structured problems here for columns().
        self._parsed = threading.local()

    def accepts(self, relpath):
        return tpl.is_template_file(relpath)

    def parse(self, path, relpath):
        try:
            if is_user_file(relpath):
                raw = read_user_file(self.root, relpath, MAX_TEMPLATE_BYTES + 1)
            else:
                with open(path, "rb") as handle:
                    raw = handle.read(MAX_TEMPLATE_BYTES + 1)
        except OSError as exc:
            raise InvalidFile(f"cannot be read: {exc.strerror}") from None
        except UnsafePath as exc:
            raise InvalidFile(f"not read: {exc.message}") from None
        if len(raw) > MAX_TEMPLATE_BYTES:
            raise InvalidFile(f"larger than {MAX_TEMPLATE_BYTES} bytes; a template is a short YAML file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidFile(f"not UTF-8 text (invalid byte at offset {exc.start})") from None
        parsed = tpl.parse_template(text, relpath)
        document = {"id": parsed.id, "source": parsed.source,
                    "template": parsed.document if isinstance(parsed.document, dict) else None,
                    "errors": parsed.errors, "warnings": parsed.warnings}
        if parsed.errors:
            # The indexer then stores, counts and logs (once) the file as invalid.
            self._parsed.value = (relpath, document)
            raise InvalidFile(summary(parsed.errors))
        self._parsed.value = None
        return document

    def columns(self, entry):
        document = entry.document
        stashed = getattr(self._parsed, "value", None)
        self._parsed.value = None
        if document is None and stashed and stashed[0] == entry.relpath:
            document = stashed[1]
        if document is None:  # unreadable: the indexer's reason is the only problem
            try:
                source = tpl.source_of(entry.relpath)
            except ValueError:
                source = None
            local = tpl.local_id_from_filename(entry.relpath)
            document = {"id": tpl.template_id(source, local) if source else None, "source": source,
                        "template": None, "errors": [{"path": "", "message": entry.error}], "warnings": []}
        body = document.get("template") or {}
        valid = entry.valid and not document["errors"]

        def text(key, limit):
            value = body.get(key)
            return value[:limit] if isinstance(value, str) else None

        return {
            "template_id": document.get("id"),
            "source": document.get("source"),
            "version": text("version", 128),
            "category": (text("category", 64) or tpl.DEFAULT_CATEGORY) if valid else text("category", 64),
            "name": text("name", 255),
            "document": document,
        }

    def invalid_files(self):
        """``[(relpath, problems as text)]`` of every invalid template, for ``hpcportald scan``."""
        m = self.model
        return list(m.select(m.relpath, m.error).where(m.valid == False)  # noqa: E712
                    .order_by(m.relpath).tuples())


def summary(problems):
    """Problems as lines an admin reads: ``files[2].patterns (line 14): message``."""
    lines = []
    for problem in problems:
        where = problem.get("path") or ""
        if problem.get("line") and "line " not in problem["message"]:
            where = f"{where} (line {problem['line']})".strip()
        lines.append(f"{where}: {problem['message']}" if where else problem["message"])
    return "\n".join(lines)


def image_summary(image):
    if image is None:
        return None
    keys = ("id", "qualified_id", "name", "path", "type", "version", "size", "apps", "partitions",
            "gpu", "arch")
    return {k: image[k] for k in keys if k in image}


@dataclass
class _Version:
    id: str
    relpath: str
    path: str
    source: str
    template: dict
    warnings: list
    indexed_at: object


@dataclass
class _Snapshot:
    # id -> versions sorted ascending by semver
    templates: dict = field(default_factory=dict)
    invalid: list = field(default_factory=list)
    images: list = field(default_factory=list)
    # id -> the newest version as listed, serialised once per snapshot
    listed: dict = field(default_factory=dict)
    key: tuple = None


class TemplateCatalog:
    """Read side of the template index, plus rendering."""

    def __init__(self, database, kind, *, images, uploads, favourites):
        """``images``: the ``ImageCatalog`` templates resolve their image in;
        ``uploads``: the ``Uploads`` their file slots name files of;
        ``favourites``: the ``Favourites`` every template object's ``favourite`` comes from."""
        self._database = database
        self._favourites = favourites
        self._uploads = uploads
        self._kind = kind
        self._images = images
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()

    @property
    def kind(self):
        return self._kind

    # -- snapshot ------------------------------------------------------------

    def snapshot(self):
        key = (generation(self._database, KIND), self._images.generation())
        with self._lock:
            if self._snapshot.key == key:
                return self._snapshot
        snapshot = self._build(key)
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    def _build(self, key):
        snapshot = _Snapshot(key=key)
        rows = list(Template.select().order_by(Template.relpath))
        grouped = {}
        for row in rows:
            document = row.document or {}
            if not row.valid or not document.get("template"):
                snapshot.invalid.append(self._invalid_item(row, document.get("errors") or []))
                continue
            version = _Version(row.template_id, row.relpath, row.path, row.source, document["template"],
                               list(document.get("warnings") or []), row.indexed_at)
            per_id = grouped.setdefault(row.template_id, {})
            same = per_id.get(version.template["version"])
            if same is not None:
                # Rows are ordered by relpath: the first file keeps the version.
                snapshot.invalid.append(self._invalid_item(row, [{
                    "path": "version",
                    "message": f"{row.template_id} {version.template['version']} is also defined by "
                               f"{same.relpath}, which is used"}]))
                continue
            per_id[version.template["version"]] = version
        snapshot.templates = {tid: [per_id[v] for v in tpl.sort_versions(per_id)]
                              for tid, per_id in grouped.items()}
        snapshot.images = self._images.images()
        snapshot.listed = {tid: self._serialize(versions[-1], [v.template["version"] for v in versions],
                                                snapshot.images)
                           for tid, versions in snapshot.templates.items()}
        return snapshot

    def _invalid_item(self, row, problems):
        document = row.document or {}
        body = document.get("template") or {}
        return {
            "id": row.template_id,
            "name": row.name,
            "version": row.version,
            "source": row.source,
            "owner": tpl.owner_of(row.source) if row.source else None,
            "path": row.path,
            "relpath": row.relpath,
            "category": body.get("category") if isinstance(body.get("category"), str) else None,
            "valid": False,
            "ready": False,
            "errors": problems,
            "warnings": document.get("warnings") or [],
            "updated_at": isoformat(row.indexed_at),
        }

    # -- serialising -----------------------------------------------------------

    def _serialize(self, version, versions, images, with_script=False):
        doc = version.template
        container = doc.get("apptainer")
        image = tpl.resolve_image(container["image"], images) if container else None
        warnings = list(version.warnings)
        if container and image is None:
            warnings.append({"path": "apptainer.image",
                             "message": f"{container['image']!r} matches no image in the image catalog; "
                                        f"the template cannot be used until such an image is added"})
        slurm = {key: tpl.slurm_setting(raw) for key, raw in (doc.get("slurm") or {}).items()}
        item = {
            "id": version.id,
            "name": doc["name"],
            "version": doc["version"],
            "versions": versions,
            "category": doc.get("category", tpl.DEFAULT_CATEGORY),
            "description": doc.get("description", ""),
            "tags": doc.get("tags", []),
            "maintainer": doc.get("maintainer"),
            "source": version.source,
            "owner": tpl.owner_of(version.source),
            "path": version.path,
            "slurm": slurm,
            "defaults": {key: spec["default"] for key, spec in slurm.items() if "default" in spec},
            "apptainer": _apptainer(container),
            "image": image_summary(image),
            "ready": not container or image is not None,
            "files": [_file(f) for f in doc.get("files", [])],
            "parameters": [_parameter(p) for p in doc.get("parameters", [])],
            "warnings": warnings,
            "valid": True,
            "updated_at": isoformat(version.indexed_at),
        }
        if with_script:
            item["script"] = doc["script"]
        return item

    # -- queries -----------------------------------------------------------------

    def list(self, user, *, category=None, source=None, tag=None, q=None, image=None,
             include_invalid=False, favourite=None, limit=None, offset=0):
        """``(items, total)`` visible to ``user``, newest version of each id; every one without ``limit``.
        ``favourite``: True for the user's favourites only, False for the others."""
        if include_invalid and not (user and user.admin):
            raise PermissionDenied("Only administrators may list invalid templates.", code="admin_only")
        snapshot = self.snapshot()
        marked = self._favourites.ids(user.name) if user else set()
        # The snapshot's items are shared by every caller: the caller's flag goes on a copy.
        items = [{**item, "favourite": item["id"] in marked} for item in snapshot.listed.values()
                 if tpl.visible_to(item["source"], user)]
        if favourite is not None:
            items = [item for item in items if item["favourite"] == favourite]
        if include_invalid:
            items.extend(snapshot.invalid)
        items = [i for i in items if _matches(i, category, source, tag, q, image)]
        items.sort(key=lambda i: (not i["valid"], (i.get("name") or "").lower(), i.get("id") or "",
                                  i.get("relpath") or ""))
        return items[offset:] if limit is None else items[offset:offset + limit], len(items)

    def _find(self, user, template_id, version=None):
        snapshot = self.snapshot()
        versions = snapshot.templates.get(template_id)
        if not versions or not tpl.visible_to(versions[-1].source, user):
            raise NotFound(f"There is no template {template_id!r}.", code="template_not_found")
        if version is None:
            chosen = versions[-1]
        else:
            chosen = next((v for v in versions if v.template["version"] == version), None)
            if chosen is None:
                raise NotFound(f"Template {template_id!r} has no version {version!r}; it has "
                               f"{', '.join(v.template['version'] for v in versions)}.",
                               code="template_version_not_found")
        return chosen, [v.template["version"] for v in versions], snapshot.images

    def get(self, user, template_id, version=None):
        chosen, versions, images = self._find(user, template_id, version)
        item = self._serialize(chosen, versions, images, with_script=True)
        item["favourite"] = bool(user) and template_id in self._favourites.ids(user.name)
        return item

    def exists(self, user, template_id):
        """Whether ``user`` sees a valid template ``template_id``."""
        versions = self.snapshot().templates.get(template_id)
        return bool(versions) and tpl.visible_to(versions[-1].source, user)

    def versions_of(self, template_id):
        """``[(version, relpath)]`` of a valid template, oldest first (empty when there is none)."""
        return [(v.template["version"], v.relpath) for v in self.snapshot().templates.get(template_id, [])]

    def set_favourite(self, user, template_id, marked):
        """Mark or unmark a template the user sees; the template object as ``get`` answers it."""
        self._find(user, template_id)
        if marked:
            self._favourites.add(user.name, template_id)
        else:
            self._favourites.remove(user.name, template_id)
        return self.get(user, template_id)

    def render(self, user, template_id, request, *, version=None, job_dir, apptainer_command="apptainer",
               extra_binds=(), lookup_file=None, bind_file_folders=False, stat=None):
        """What a submit runs (see ``templates.render``).

        Files given by ``file_id`` are the user's uploads (``lookup_file(user,
        file_id)``, else the uploads area); a ``storage_path`` that is one of the
        user's uploads takes its name, size and type from the upload record, not
        from the client. Other paths are not looked at (``stat=None``) unless
        the caller, having checked them, passes ``stat=os.stat``.
        ``bind_file_folders``: also bind each file's folder into the container,
        after ``extra_binds`` (as submits do).
        """
        chosen, _versions, images = self._find(user, template_id, version)
        if isinstance(request, dict) and isinstance(request.get("files"), list):
            errors = {}
            files = [self._resolve_file(user, item, index, lookup_file, errors)
                     for index, item in enumerate(request["files"])]
            for index, item in enumerate(files):
                path = item.get("storage_path") if isinstance(item, dict) else item
                if isinstance(path, str) and f"files[{index}]" not in errors:
                    try:
                        input_path(path)
                    except ValueError as exc:
                        errors[f"files[{index}]"] = str(exc)
            if errors:
                raise ValidationError(f"{len(errors)} file(s) are not acceptable for this template.",
                                      errors=errors)
            request = dict(request, files=files)
            if bind_file_folders:
                binds = [job_dir, *extra_binds]
                for item in files:
                    path = item.get("storage_path") if isinstance(item, dict) else item
                    folder = posixpath.dirname(path) if isinstance(path, str) and path.startswith("/") else None
                    if folder and folder not in binds:
                        binds.append(folder)
                extra_binds = binds[1:]
        result = tpl.render(chosen.template, request, template_id=template_id, images=images,
                            job_dir=job_dir, apptainer_command=apptainer_command,
                            extra_binds=extra_binds, stat=stat)
        result["image"] = image_summary(result["image"])
        return result

    def _resolve_file(self, user, item, index, lookup_file, errors):
        if not isinstance(item, dict):
            return item
        uploads = self._uploads
        file_id = item.get("file_id")
        path = item.get("storage_path")
        fields = ("storage_path", "filename", "size", "file_type")
        if file_id not in (None, "") and not path:
            if lookup_file is not None:
                found = lookup_file(user, file_id)
            else:
                found = uploads.file_for_user(user.name, file_id) \
                    if uploads is not None and isinstance(file_id, str) else None
            if found is None:
                errors[f"files[{index}]"] = f"you have no uploaded file {file_id!r}"
                return item
            return {**{k: found[k] for k in fields if k in found},
                    **({"name": item["name"]} if "name" in item else {})}
        if isinstance(path, str) and uploads is not None:
            found = uploads.file_by_storage_path(user.name, path)
            if found is not None:
                # The record, not the client, says what the file is.
                return {**item, **{k: found[k] for k in fields[1:] if k in found}}
        return item

    def invalid(self):
        return list(self.snapshot().invalid)


def _apptainer(container):
    if not container:
        return None
    return {"image": container["image"], "app": container.get("app"), "binds": container.get("binds", []),
            "env": container.get("env", {}), "gpu": container.get("gpu", False),
            "options": container.get("options", [])}


def _file(spec):
    out = {"name": spec["name"], "env": tpl.file_env_name(spec["name"]), "label": spec.get("label", spec["name"]),
           "description": spec.get("description", ""), "required": spec.get("required", True),
           "patterns": spec.get("patterns", []), "type": spec.get("type")}
    if "max_size" in spec:
        out["max_size"] = spec["max_size"]
        out["max_size_bytes"] = tpl.parse_size(spec["max_size"])
    return out


def _parameter(spec):
    out = {"name": spec["name"], "env": tpl.parameter_env_name(spec["name"]),
           "label": spec.get("label", spec["name"]), "type": spec["type"],
           "required": spec.get("required", False), "help": spec.get("help", "")}
    for key in ("default", "min", "max", "choices", "pattern", "max_length"):
        if key in spec:
            out[key] = spec[key]
    return out


def _matches(item, category, source, tag, q, image):
    if category and item.get("category") != category:
        return False
    if source:
        item_source = item.get("source") or ""
        if source == tpl.USERS_SOURCE:
            if not item_source.startswith(tpl.USERS_SOURCE + "/"):
                return False
        elif item_source != source:
            return False
    if tag and tag.lower() not in [t.lower() for t in item.get("tags") or []]:
        return False
    if q:
        needle = q.lower()
        haystack = " ".join(str(x) for x in (item.get("id"), item.get("name"), item.get("description"),
                                             item.get("category"), " ".join(item.get("tags") or []))
                            if x).lower()
        if needle not in haystack:
            return False
    if image:
        resolved = (item.get("image") or {}).get("id")
        pattern = ((item.get("apptainer") or {}).get("image") or "").lower()
        if resolved != image and not (pattern and fnmatch.fnmatchcase(image.lower(), pattern)):
            return False
    return True


def job_dir_preview(uploads_root, user_name):
    """The job folder shown in a rendered script; a submit uses its own submission id."""
    return posixpath.join(uploads_root, user_name, "jobs", PREVIEW_SUBMISSION)
