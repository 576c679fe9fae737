"""The Apptainer image catalog: ``<images root>/<type>/<file>.sif``.

The sub-folder is the image's ``type`` (``compute``, ``viz``, any name an
admin creates); files deeper or directly in the root are not images. Each
image may have a sidecar ``<file>.sif.yaml`` with ``description``, ``tags``,
``partitions``, ``gpu`` and ``version``.

What is stored per file is what was read from it (``sif.read_sif``) and from
its sidecar; everything derived from configuration (partitions of a type) or
from other files (the id) is computed when the catalog is served, so a config
change applies without re-reading the images.

Ids: the file stem made URL-safe (``python_3.11``); when two types hold the
same stem, both get ``<stem>~<type>`` (``python_3.11~viz``). ``~`` never occurs
in a sanitised stem, so the two forms cannot collide; ``<stem>~<type>`` is also
always accepted for lookups.
"""

import logging
import os
import re
import threading

import yaml

from ..models.base import isoformat
from ..models.catalog import Image
from . import safe_yaml
from .index_store import ModelKind, generation
from .kinds import InvalidFile
from .sif import SifError, read_sif

log = logging.getLogger("hpcportal.catalog")

SIF_SUFFIX = ".sif"
SIDECAR_SUFFIX = ".yaml"
SIDECAR_KEYS = {"description", "tags", "partitions", "gpu", "version"}
MAX_SIDECAR = 64 * 1024
# "python_3.11" -> "3.11", "openfoam-v2312" -> "v2312", "gromacs-2023.3-cuda" -> "2023.3"
_VERSION_IN_NAME = re.compile(r"[_-](v?\d[0-9A-Za-z.+]*)")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
DESCRIPTION_LABELS = ("org.opencontainers.image.description", "description",
                      "org.label-schema.description")
VERSION_LABELS = ("org.opencontainers.image.version", "version", "org.label-schema.version")
PARTITIONS_LABEL = "hpcportal.partitions"


def version_from_name(stem):
    match = _VERSION_IN_NAME.search(stem)
    return match.group(1).rstrip(".") if match else None


def safe_stem(stem):
    return _UNSAFE_ID_CHARS.sub("-", stem).strip("-") or "image"


def _partition_list(value):
    """A sidecar/label partition list: YAML list, JSON list or "a, b" string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = safe_yaml.load(text, MAX_SIDECAR)
            except yaml.YAMLError:
                return None
        else:
            value = [part for part in re.split(r"[,\s]+", text) if part]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return None
    return [v.strip() for v in value if v.strip()]


def read_sidecar(path):
    """(values, error) of ``<image>.sif.yaml``; (None, None) when there is none."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SIDECAR + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"sidecar {os.path.basename(path)} is not readable: {exc.strerror}"
    ignored = f"sidecar {os.path.basename(path)} is ignored:"
    try:
        data = safe_yaml.load(raw, MAX_SIDECAR) or {}
    except safe_yaml.Refused as exc:
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        return None, f"{ignored} {exc.problem}{where}"
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, f"{ignored} not valid YAML: {exc}"
    if not isinstance(data, dict):
        return None, f"{ignored} it must be a mapping of keys to values"
    values, problems = {}, []
    for key, value in data.items():
        if key not in SIDECAR_KEYS:
            problems.append(f"unknown key {key!r}")
        elif key == "partitions":
            parts = _partition_list(value)
            if parts is None:
                problems.append("partitions must be a list of partition names")
            else:
                values[key] = parts
        elif key == "tags":
            tags = _partition_list(value)
            if tags is None:
                problems.append("tags must be a list of strings")
            else:
                values[key] = tags
        elif key == "gpu":
            if not isinstance(value, bool):
                problems.append("gpu must be true or false")
            else:
                values[key] = value
        elif isinstance(value, (dict, list)):
            problems.append(f"{key} must be a single value, not a {type(value).__name__}")
        elif value is not None:
            values[key] = str(value)
    if problems:
        # Half a sidecar would mix the admin's values with the image's own:
        # the image keeps its own metadata until the sidecar is fixed.
        return None, f"{ignored} " + "; ".join(problems)
    return values, None


class ImageKind(ModelKind):
    """The images catalog as an indexer kind."""

    name = "images"
    model = Image

    def __init__(self, database, root, read=read_sif):
        super().__init__(database)
        self.root = root
        self._read = read

    def accepts(self, relpath):
        parts = relpath.split("/")
        return (len(parts) == 2 and parts[1].endswith(SIF_SUFFIX)
                and len(parts[1]) > len(SIF_SUFFIX))

    def owner_of(self, relpath):
        if relpath.endswith(SIF_SUFFIX + SIDECAR_SUFFIX):
            owner = relpath[:-len(SIDECAR_SUFFIX)]
            if self.accepts(owner):
                return owner
        return None

    def companion_state(self, path):
        try:
            stat = os.stat(path + SIDECAR_SUFFIX)
        except OSError:
            return ""
        return f"sidecar:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"

    def parse(self, path, relpath):
        try:
            meta = self._read(path)
        except SifError as exc:
            raise InvalidFile(str(exc)) from None
        runnable = meta["partition"] and meta["partition"]["type"] in ("primary-system", "system")
        if not runnable and not meta["oci"]:
            raise InvalidFile("not a container image: the SIF file has no root filesystem "
                              "partition (a data container or an empty SIF)")
        sidecar, sidecar_error = read_sidecar(path + SIDECAR_SUFFIX)
        if sidecar_error:
            log.warning("catalog images: %s", sidecar_error)
        return {"sif": meta, "sidecar": sidecar, "sidecar_error": sidecar_error}

    def columns(self, entry):
        folder, name = entry.relpath.split("/", 1)
        return {"name": name[:255], "type": folder[:255], "document": entry.document}


class ImageCatalog:
    """Serving the image index: listing, filters, lookups; cached per generation."""

    def __init__(self, database, root, type_partitions):
        self._database = database
        self.root = root
        self._type_partitions = {k: list(v) for k, v in (type_partitions or {}).items()}
        self.kind = ImageKind(database, root)
        self._lock = threading.Lock()
        # (generation, images, by id, search text by qualified id), replaced whole.
        self._snapshot = (None, [], {}, {})
        self._documents = {}    # path hash -> (row key, document)
        self._rendered = {}     # path hash -> ((row key, ambiguous), image, search text)

    # -- reading the index ---------------------------------------------------

    def images(self, include_invalid=False):
        """Every image as served (sorted by type, then name); copies, free to modify."""
        items = self._current()[1]
        return [dict(i) for i in items if include_invalid or i["valid"]]

    def generation(self):
        return generation(self._database, self.kind.name)

    def get(self, image_id, include_invalid=False):
        """One image by id (``stem`` or ``stem~type``), or None."""
        image = self._current()[2].get(image_id)
        if image is None or (not image["valid"] and not include_invalid):
            return None
        return dict(image)

    def _current(self):
        """The served snapshot, rebuilt when the index generation moved (any daemon)."""
        current = self.generation()
        snapshot = self._snapshot
        if snapshot[0] == current:
            return snapshot
        with self._lock:
            if self._snapshot[0] == current:
                return self._snapshot
            rows = list(Image.select(*_LIGHT_COLUMNS).order_by(Image.type, Image.name))
            self._load_documents(rows)
            stems = {}
            for row in rows:
                stem = safe_stem(_stem(row.name))
                stems[stem] = stems.get(stem, 0) + 1
            rendered, images, haystacks = {}, [], {}
            for row in rows:
                ambiguous = stems[safe_stem(_stem(row.name))] > 1
                key = (_row_key(row), ambiguous)
                cached = self._rendered.get(row.path_hash)
                if cached is None or cached[0] != key:
                    image = self._serialize(row, ambiguous)
                    cached = (key, image, _haystack(image))
                rendered[row.path_hash] = cached
                images.append(cached[1])
                haystacks[cached[1]["qualified_id"]] = cached[2]
            self._rendered = rendered
            by_id = {}
            for image in images:
                by_id[image["id"]] = image
            for image in images:
                by_id.setdefault(image["qualified_id"], image)
            self._snapshot = (current, images, by_id, haystacks)
            return self._snapshot

    def _load_documents(self, rows):
        """Documents of new or changed rows only: a change costs one row, not all."""
        wanted = [row.path_hash for row in rows
                  if self._documents.get(row.path_hash, (None,))[0] != _row_key(row)]
        for start in range(0, len(wanted), 500):
            query = (Image.select(Image.path_hash, *_KEY_COLUMNS, Image.document)
                     .where(Image.path_hash.in_(wanted[start:start + 500])))
            for row in query:
                self._documents[row.path_hash] = (_row_key(row), row.document)
        present = {row.path_hash for row in rows}
        for path_hash in [h for h in self._documents if h not in present]:
            del self._documents[path_hash]
        for row in rows:
            row.document = self._documents.get(row.path_hash, (None, None))[1]

    def _serialize(self, row, ambiguous):
        stem = _stem(row.name)
        qualified = f"{safe_stem(stem)}~{safe_stem(row.type)}"
        document = row.document or {}
        meta = document.get("sif") or {}
        sidecar = document.get("sidecar") or {}
        labels = meta.get("labels") or {}
        warnings = list(meta.get("warnings") or [])
        if document.get("sidecar_error"):
            warnings.append(document["sidecar_error"])
        description = sidecar.get("description") or _first_label(labels, DESCRIPTION_LABELS) \
            or meta.get("help")
        version = sidecar.get("version") or _first_label(labels, VERSION_LABELS) \
            or version_from_name(stem)
        partitions, partitions_from = self._partitions(row.type, sidecar, labels)
        apps = meta.get("apps") or []
        return {
            "id": qualified if ambiguous else safe_stem(stem),
            "qualified_id": qualified,
            "name": row.name,
            "path": os.path.normpath(row.path),
            "type": row.type,
            "size": row.size,
            "version": version,
            "description": description,
            "apps": [app["name"] for app in apps],
            "app_details": apps,
            "partitions": partitions,
            "partitions_from": partitions_from,
            "tags": sidecar.get("tags") or [],
            "gpu": bool(sidecar.get("gpu", False)),
            "arch": meta.get("arch"),
            "created": meta.get("created"),
            "sif_id": meta.get("sif_id"),
            "labels": labels,
            "labels_source": meta.get("labels_source"),
            "deffile": meta.get("deffile"),
            "help": meta.get("help"),
            "signed": meta.get("signed", False),
            "encrypted": meta.get("encrypted", False),
            "modified": isoformat(_from_ns(row.mtime_ns)),
            "indexed_at": isoformat(row.indexed_at),
            "valid": bool(row.valid),
            "error": row.error,
            "warnings": warnings,
        }

    def _partitions(self, image_type, sidecar, labels):
        if sidecar.get("partitions") is not None:
            return sidecar["partitions"], "sidecar"
        from_label = _partition_list(labels.get(PARTITIONS_LABEL)) if labels.get(PARTITIONS_LABEL) \
            else None
        if from_label is not None:
            return from_label, "label"
        if image_type in self._type_partitions:
            return list(self._type_partitions[image_type]), "config"
        # A type nobody mapped yet: its images run on the partition of that name.
        return [image_type], "type"

    # -- queries -----------------------------------------------------------

    def search(self, partition=None, image_type=None, app=None, q=None, include_invalid=False):
        """(generation, matching images) for the filters; the images are the shared
        cached dicts: read them, never modify them."""
        generation, images, _, haystacks = self._current()
        if not include_invalid:
            images = [i for i in images if i["valid"]]
        if partition:
            images = [i for i in images if partition in i["partitions"]]
        if image_type:
            images = [i for i in images if i["type"] == image_type]
        if app:
            wanted = app.lower()
            images = [i for i in images if any(a.lower() == wanted for a in i["apps"])]
        if q:
            needle = q.lower()
            images = [i for i in images if needle in haystacks.get(i["qualified_id"], "")]
        return generation, images


_KEY_COLUMNS = (Image.size, Image.mtime_ns, Image.inode, Image.companion, Image.valid,
                Image.error, Image.indexed_at)
_LIGHT_COLUMNS = (Image.path_hash, Image.relpath, Image.path, Image.name, Image.type,
                  *_KEY_COLUMNS)


def _row_key(row):
    """What identifies one stored version of a row (a re-store changes indexed_at)."""
    return (row.size, row.mtime_ns, row.inode, row.companion, bool(row.valid), row.error,
            str(row.indexed_at))


def _haystack(image):
    """The text ``q`` searches: name, description, apps, tags and labels."""
    parts = [image["name"], image["description"] or "", " ".join(image["apps"]),
             " ".join(image["tags"])]
    parts += [f"{k} {v}" for k, v in image["labels"].items()]
    return "\n".join(parts).lower()


def _stem(name):
    return name[:-len(SIF_SUFFIX)] if name.endswith(SIF_SUFFIX) else name


def _first_label(labels, keys):
    for key in keys:
        value = labels.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _from_ns(mtime_ns):
    import datetime
    return datetime.datetime.fromtimestamp(mtime_ns / 1e9, datetime.timezone.utc).replace(
        tzinfo=None, microsecond=0)

