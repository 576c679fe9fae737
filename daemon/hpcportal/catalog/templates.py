"""Job templates: parsing, validation, versions, visibility and rendering.

A template is one YAML document under ``<templates root>/<source>/.../<name>.yaml``
whose format is the JSON Schema ``template_schema.json`` shipped beside this
module (served at ``GET /api/v2/templates/schema``). No falcon here: the
resource and the catalog indexer call these functions.

- ``parse_template(text, relpath)`` -> ``ParsedTemplate``: YAML errors with line
  and column, every schema violation with its path (``files[2].patterns``) and
  line, cross-checks (duplicate names, defaults out of bounds, ``#SBATCH`` in the
  script, undeclared ``$PARAM_X``/``$FILE_X`` as warnings). Never raises for a
  bad document: an invalid template is kept with its problems listed.
- ``template_id(source, local_id)``, ``source_of(relpath)``, ``visible_to(source, user)``.
- ``semver_key(version)``: sort key following semver 2.0 precedence.
- ``resolve_image(pattern, images)``: the catalog image an ``apptainer.image`` names.
- ``render(document, request, ...)`` -> ``Rendered``: checks the request's parameter
  values, files and Slurm overrides against the template (every problem in one
  ``ValidationError``) and describes the job as a ``slurm.job.JobSpec`` (its
  ``spec``); the answer's ``script`` is that job's batch script, written by
  ``slurm.script.render_batch_script`` as for every other job. The template's
  script is saved at ``body_path`` and run from there; parameter values and file
  paths reach it only as exported variables.
"""

import datetime
import fnmatch
import functools
import importlib.resources
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass, field

import jsonschema
import yaml

from ..errors import ValidationError
from . import safe_yaml
from ..slurm import values
from ..slurm.job import JobSpec
from ..slurm.script import bash_quote, input_path, render_batch_script  # noqa: F401 (bash_quote: tests)

TEMPLATE_SUFFIXES = (".yaml", ".yml")
USERS_SOURCE = "users"

_LOCAL_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SOURCE_PART = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Unix user names as useradd accepts them by default (NAME_REGEX).
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
_SCRIPT_REFERENCE = re.compile(r"\$\{?((?:PARAM|FILE)_[A-Za-z0-9_]+)")
_SBATCH_LINE = re.compile(r"^[ \t]*#[ \t]*SBATCH", re.MULTILINE)

DEFAULT_STRING_MAX_LENGTH = 4096
DEFAULT_CATEGORY = "general"


# --------------------------------------------------------------------------- schema

@functools.lru_cache(maxsize=1)
def schema():
    """The template JSON Schema (a dict; do not modify)."""
    text = importlib.resources.files(__package__).joinpath("template_schema.json").read_text("utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _validator():
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


# --------------------------------------------------------------------------- YAML

class _UniqueKeyLoader(safe_yaml.BoundedLoader):
    """Refuses duplicate keys (PyYAML would silently keep the last), aliases
    and deep nesting."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # the default constructor reports unhashable keys itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _problem(path, message, line=None, column=None):
    problem = {"path": path, "message": message}
    if line is not None:
        problem["line"] = line
    if column is not None:
        problem["column"] = column
    return problem


def _yaml_problem(exc):
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    parts = [p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p]
    message = "; ".join(parts) if parts else str(exc)
    if mark is None:
        return _problem("", f"not valid YAML: {message}")
    return _problem("", f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {message}",
                    mark.line + 1, mark.column + 1)


def _node_at(root, path):
    """The YAML node at a JSON path, for line numbers; the deepest one found."""
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
    return node


def format_path(parts):
    """``("files", 2, "patterns")`` -> ``files[2].patterns``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --------------------------------------------------------------------------- ids, sources

def source_of(relpath):
    """``official/cfd/x.yaml`` -> ``official``; ``users/alice/x.yaml`` -> ``users/alice``.

    Raises ValueError for files outside a valid source folder.
    """
    parts = [p for p in relpath.replace(os.sep, "/").split("/") if p]
    if len(parts) < 2:
        raise ValueError("a template must lie in a source folder such as official/ or community/")
    if parts[0] == USERS_SOURCE:
        if len(parts) < 3:
            raise ValueError("a user's template must lie in users/<user name>/")
        if not _USER_NAME.match(parts[1]):
            raise ValueError(f"users/{parts[1]}: not a valid user name")
        return f"{USERS_SOURCE}/{parts[1]}"
    if not _SOURCE_PART.match(parts[0]):
        raise ValueError(f"{parts[0]}: a source folder name uses a-z, 0-9, _ and - only")
    return parts[0]


def local_id_from_filename(relpath):
    stem = posixpath.basename(relpath.replace(os.sep, "/"))
    for suffix in TEMPLATE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    slug = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")
    return slug[:64] or "template"


def template_id(source, local_id):
    """``official`` + ``openfoam`` -> ``official.openfoam``; ``users/alice`` -> ``users.alice.x``.

    Source parts and local ids never contain dots, so an id names one source
    and one local id; a file cannot claim another source's id.
    """
    return source.replace("/", ".") + "." + local_id


def is_template_file(relpath):
    name = posixpath.basename(relpath.replace(os.sep, "/"))
    return name.endswith(TEMPLATE_SUFFIXES) and not name.startswith(".")


def owner_of(source):
    """The user name a ``users/<name>`` source belongs to, else None."""
    if source.startswith(USERS_SOURCE + "/"):
        return source.split("/", 1)[1]
    return None


def visible_to(source, user):
    """Shared sources for everyone; ``users/<name>`` for that user and admins."""
    owner = owner_of(source)
    if owner is None:
        return True
    return bool(user is not None and (user.admin or user.name == owner))


# --------------------------------------------------------------------------- versions

def parse_semver(version):
    match = _SEMVER.match(version or "")
    if not match:
        raise ValueError(f"{version!r} is not a semantic version such as 1.2.0")
    major, minor, patch, pre, _build = match.groups()
    return int(major), int(minor), int(patch), pre


def semver_key(version):
    """Sort key by semver precedence (build metadata ignored; invalid sorts first)."""
    try:
        major, minor, patch, pre = parse_semver(version)
    except ValueError:
        return (-1, -1, -1, 0, ())
    if pre is None:
        # A release ranks above all its pre-releases.
        return (major, minor, patch, 1, ())
    idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, 0, idents)


def sort_versions(versions):
    return sorted(versions, key=semver_key)


# --------------------------------------------------------------------------- sizes, durations

MAX_SIZE = values.MAX_SIZE
MAX_TIME_LIMIT = values.MAX_TIME


def parse_size(value):
    """Bytes from ``16GB``/``16G``/``512M``/``1.5GiB``/an integer (bytes), as Slurm reads sizes."""
    return values.size_bytes(value)


def slurm_memory(value):
    """A template size as sbatch's ``--mem`` wants it (a bare number is bytes in a template)."""
    return values.slurm_memory(value, default_unit="")


def parse_slurm_time(value):
    """Seconds from every format sbatch --time accepts (minutes as an integer); never unlimited."""
    return values.time_seconds(value, allow_unlimited=False)


format_slurm_time = values.format_time


# --------------------------------------------------------------------------- slurm settings

# Template key -> (sbatch option, kind).
SLURM_SETTINGS = {
    "partition": ("partition", "name"),
    "nodes": ("nodes", "count"),
    "cpus": ("ntasks-per-node", "count"),
    "cpus_per_task": ("cpus-per-task", "count"),
    "memory": ("mem", "size"),
    "time": ("time", "duration"),
    "gpus": ("gres", "count"),
    "gres": ("gres", "gres"),
    "account": ("account", "name"),
    "qos": ("qos", "name"),
}
# Template key -> JobSpec field.
_SPEC_FIELDS = {"partition": "partition", "nodes": "nodes", "cpus": "tasks_per_node",
                "cpus_per_task": "cpus_per_task", "memory": "memory", "time": "time", "gpus": "gpus",
                "gres": "gres", "account": "account", "qos": "qos"}
# Where a submit saves the template's script, in the job folder.
BODY_NAME = "script.sh"
# Request spellings the dashboard uses, mapped to template keys.
OVERRIDE_ALIASES = {"cpusPerTask": "cpus_per_task", "ntasks_per_node": "cpus", "mem": "memory"}


def slurm_setting(raw):
    """A template's slurm entry normalised to ``{default, min, max, choices, fixed}``."""
    if isinstance(raw, dict):
        spec = dict(raw)
    else:
        spec = {"default": raw}
    spec.setdefault("fixed", False)
    return spec


def _measure(kind, value):
    """A comparable number for bounds (bytes, seconds, counts)."""
    if kind == "size":
        return parse_size(value)
    if kind == "duration":
        return parse_slurm_time(value)
    return value


def _setting_problems(key, spec):
    """Cross-checks of one slurm setting (the schema has checked the shapes)."""
    kind = SLURM_SETTINGS[key][1]
    problems = []
    path = f"slurm.{key}"
    try:
        low = _measure(kind, spec["min"]) if "min" in spec else None
        high = _measure(kind, spec["max"]) if "max" in spec else None
        default = _measure(kind, spec["default"]) if "default" in spec else None
    except ValueError as exc:
        return [_problem(path, str(exc))]
    if low is not None and high is not None and low > high:
        problems.append(_problem(path, "min is larger than max"))
    if default is not None:
        if low is not None and default < low:
            problems.append(_problem(f"{path}.default", f"the default is below the minimum {spec['min']}"))
        if high is not None and default > high:
            problems.append(_problem(f"{path}.default", f"the default is above the maximum {spec['max']}"))
        if spec.get("choices") and spec["default"] not in spec["choices"]:
            problems.append(_problem(f"{path}.default", "the default is not one of the choices"))
    if spec.get("fixed") and "default" not in spec:
        problems.append(_problem(path, "fixed: true needs a default"))
    return problems


# --------------------------------------------------------------------------- parsing

@dataclass
class ParsedTemplate:
    """One template file, valid or not."""

    relpath: str
    source: str | None
    local_id: str
    id: str | None
    document: dict | None
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def valid(self):
        return not self.errors and self.document is not None

    @property
    def version(self):
        value = (self.document or {}).get("version")
        return value if isinstance(value, str) else None

    def field(self, name, default=None):
        return (self.document or {}).get(name, default)


def parse_template(text, relpath):
    """Parse and check one template file's text. Never raises for bad content."""
    relpath = relpath.replace(os.sep, "/")
    try:
        source = source_of(relpath)
    except ValueError as exc:
        source = None
        source_error = _problem("", str(exc))
    else:
        source_error = None
    parsed = ParsedTemplate(relpath=relpath, source=source, local_id=local_id_from_filename(relpath),
                            id=None, document=None)
    if source_error:
        parsed.errors.append(source_error)
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        parsed.errors.append(_yaml_problem(exc))
        _assign_id(parsed)
        return parsed
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        parsed.errors.append(_problem("", f"a template is a YAML mapping (name:, version:, script:, ...), "
                                          f"this file is {kind}", 1, 1))
        _assign_id(parsed)
        return parsed
    document = _json_safe(document)
    parsed.document = document
    problems = []
    for error in _validator().iter_errors(document):
        problems.extend(_schema_problems(error, root))
    parsed.errors.extend(sorted(problems, key=lambda p: (p.get("line") or 0, p["path"])))
    if isinstance(document.get("id"), str) and _LOCAL_ID.match(document["id"]):
        parsed.local_id = document["id"]
    _assign_id(parsed)
    if not parsed.errors:
        _cross_check(parsed, root)
    return parsed


def _json_safe(value):
    """YAML dates and other non-JSON scalars become strings, so the schema judges them."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _assign_id(parsed):
    if parsed.source:
        parsed.id = template_id(parsed.source, parsed.local_id)


def _pick_branch(error):
    """For oneOf/anyOf errors, the branch error that explains most, and the
    nearest schema description (to say what was expected)."""
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    while error.context:
        # A branch of another type ("not of type 'object'") is rarely what the author meant.
        candidates = [e for e in error.context if e.validator != "type"] or list(error.context)
        error = max(candidates, key=lambda e: len(e.absolute_path))
        if isinstance(error.schema, dict) and error.schema.get("description"):
            description = error.schema["description"]
    return error, description


def _schema_problems(error, root):
    described = None
    if error.context:
        error, described = _pick_branch(error)
    if error.validator in ("pattern", "type", "oneOf", "minimum") and described:
        parts = list(error.absolute_path)
        return [_problem(format_path(parts), f"{error.instance!r} is not valid here: {described}",
                         *_mark_of(root, parts))]
    if error.validator == "required" and isinstance(error.instance, dict):
        parts = list(error.absolute_path)
        line, _column = _mark_of(root, parts)
        missing = [p for p in error.validator_value if p not in error.instance]
        return [_problem(format_path(parts + [p]), f"{p} is required", line) for p in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extras = [k for k in error.instance if k not in known]
        if extras:
            parts = list(error.absolute_path)
            where = format_path(parts) or "the template"
            allowed = ", ".join(sorted(known))
            return [_problem(format_path(parts + [k]), f"unknown key {k!r} in {where} (allowed: {allowed})",
                             *_mark_of(root, parts + [k], key=True)) for k in extras]
    return [_schema_problem(error, root)]


def _mark_of(root, parts, key=False):
    """(line, column) of the node at ``parts``; of its key when ``key``."""
    if key and parts:
        parent = _node_at(root, parts[:-1])
        if isinstance(parent, yaml.MappingNode):
            for k, _ in parent.value:
                if getattr(k, "value", None) == parts[-1]:
                    return k.start_mark.line + 1, k.start_mark.column + 1
    node = _node_at(root, parts)
    if node is None:
        return None, None
    return node.start_mark.line + 1, node.start_mark.column + 1


def _schema_problem(error, root):
    parts = list(error.absolute_path)
    message = error.message
    if error.validator == "pattern" and parts and parts[-1] == "version":
        message = f"{error.instance!r} is not a semantic version such as 1.2.0"
    elif error.validator == "type" and parts == ["version"]:
        message = f"must be a string such as \"1.2.0\" (quote it in YAML), got {error.instance!r}"
    node = _node_at(root, parts)
    line = node.start_mark.line + 1 if node is not None else None
    column = node.start_mark.column + 1 if node is not None else None
    return _problem(format_path(parts), message, line, column)


def _line_of(root, parts):
    node = _node_at(root, parts)
    return node.start_mark.line + 1 if node is not None else None


def _cross_check(parsed, root):
    doc = parsed.document
    errors, warnings = parsed.errors, parsed.warnings

    def err(parts, message):
        errors.append(_problem(format_path(parts), message, _line_of(root, parts)))

    def warn(parts, message):
        warnings.append(_problem(format_path(parts), message, _line_of(root, parts)))

    declared = set()
    for section, prefix in (("parameters", "PARAM_"), ("files", "FILE_")):
        seen = {}
        for index, item in enumerate(doc.get(section, [])):
            env = prefix + item["name"].upper()
            if env in seen:
                err([section, index, "name"],
                    f"duplicate name {item['name']!r} (also {section}[{seen[env]}]; "
                    f"names are compared as {env})")
            else:
                seen[env] = index
            declared.add(env)

    for index, param in enumerate(doc.get("parameters", [])):
        _check_parameter(param, [ "parameters", index], err)

    for key, raw in (doc.get("slurm") or {}).items():
        for problem in _setting_problems(key, slurm_setting(raw)):
            problem["line"] = _line_of(root, ["slurm", key])
            errors.append(problem)
    slurm = doc.get("slurm") or {}
    if "gpus" in slurm and "gres" in slurm:
        err(["slurm", "gres"], "give either gpus or gres, not both")

    for index, item in enumerate(doc.get("files", [])):
        if "max_size" in item:
            try:
                parse_size(item["max_size"])
            except ValueError as exc:
                err(["files", index, "max_size"], str(exc))

    script = doc.get("script", "")
    match = _SBATCH_LINE.search(script)
    if match:
        line = script.count("\n", 0, match.start())
        err(["script"], f"line {line + 1} of the script is an #SBATCH line; put resources in the "
                        f"slurm section, which submits respect and check")
    for name in sorted({m.group(1) for m in _SCRIPT_REFERENCE.finditer(script)} - declared):
        kind = "parameter" if name.startswith("PARAM_") else "file"
        warn(["script"], f"${name} is used but no {kind} named {name.split('_', 1)[1].lower()} is declared")


def _check_parameter(param, parts, err):
    kind = param["type"]
    if kind in ("bool", "string") and ("min" in param or "max" in param):
        err(parts, f"min/max do not apply to a {kind} parameter")
    if kind != "choice" and "choices" in param:
        err(parts + ["choices"], "choices apply to type: choice only")
    if kind != "string" and ("pattern" in param or "max_length" in param):
        err(parts, "pattern and max_length apply to type: string only")
    if "pattern" in param:
        try:
            re.compile(param["pattern"])
        except re.error as exc:
            err(parts + ["pattern"], f"not a valid regular expression: {exc}")
            return
    if "min" in param and "max" in param and param["min"] > param["max"]:
        err(parts, "min is larger than max")
    if "default" in param:
        try:
            coerce_parameter(param, param["default"])
        except ValueError as exc:
            err(parts + ["default"], f"the default is not valid: {exc}")


# --------------------------------------------------------------------------- values

def coerce_parameter(param, value):
    """The checked value of one parameter (ValueError saying why not)."""
    kind = param["type"]
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
            value = int(value)
        if not isinstance(value, int):
            raise ValueError("must be an integer")
    elif kind == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value):
            value = float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("must be a number")
        value = float(value)
    elif kind == "bool":
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            value = value.strip().lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
    elif kind == "choice":
        choices = param.get("choices", [])
        match = [c for c in choices if c == value and type(c) is not bool] or \
                [c for c in choices if str(c) == str(value) and not isinstance(value, (bool, dict, list))]
        if not match:
            raise ValueError("must be one of " + ", ".join(str(c) for c in choices))
        value = match[0]
    elif kind == "string":
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        limit = param.get("max_length", DEFAULT_STRING_MAX_LENGTH)
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters long")
        if "pattern" in param and not re.fullmatch(param["pattern"], value):
            raise ValueError(f"must match {param['pattern']}")
    if kind in ("int", "float"):
        if "min" in param and value < param["min"]:
            raise ValueError(f"must be at least {param['min']}")
        if "max" in param and value > param["max"]:
            raise ValueError(f"must be at most {param['max']}")
    return value


def environment_value(value):
    """How a checked value is written into the job's environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parameter_env_name(name):
    return "PARAM_" + name.upper()


def file_env_name(name):
    return "FILE_" + name.upper()


# --------------------------------------------------------------------------- images

_IMAGE_VERSION_PART = re.compile(r"(\d+)")


def _natural_key(text):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in _IMAGE_VERSION_PART.split(text or "") if p]


def resolve_image(pattern, images, partition=None):
    """The valid image an ``apptainer.image`` names: an exact id, else the newest
    name/id glob match (by version, then name). ``images``: dicts with at least
    ``id``, ``name``; ``valid`` false ones are skipped. With ``partition``, only
    images meant for it (their ``partitions``, when they list any)."""
    if not pattern:
        return None
    candidates = [i for i in images if i.get("valid", True)]
    if partition:
        candidates = [i for i in candidates if not i.get("partitions") or partition in i["partitions"]]
    for image in candidates:
        if pattern in (image.get("id"), image.get("qualified_id")):
            return image
    lowered = pattern.lower()
    matches = [i for i in candidates
               if fnmatch.fnmatchcase(str(i.get("id", "")).lower(), lowered)
               or fnmatch.fnmatchcase(str(i.get("name", "")).lower(), lowered)
               or fnmatch.fnmatchcase(str(i.get("name", "")).lower(), lowered + ".sif")]
    if not matches:
        return None
    return max(matches, key=lambda i: (_natural_key(str(i.get("version") or "")), _natural_key(i.get("name", ""))))


# --------------------------------------------------------------------------- rendering

def _file_name_of(item):
    for key in ("filename", "original_name"):
        if isinstance(item.get(key), str) and item[key]:
            return item[key]
    path = item.get("storage_path") or item.get("path")
    return posixpath.basename(path) if isinstance(path, str) else ""


def _pattern_ok(patterns, filename):
    return not patterns or any(fnmatch.fnmatchcase(filename.lower(), p.lower()) for p in patterns)


def _check_files(document, items, errors, stat=os.stat):
    """``{slot name: path}`` and the ordered paths, filling ``errors``."""
    slots = {f["name"]: f for f in document.get("files", [])}
    assigned, ordered = {}, []
    if items is None:
        items = []
    if isinstance(items, dict):
        items = [dict(v, name=k) if isinstance(v, dict) else {"name": k, "storage_path": v}
                 for k, v in items.items()]
    if not isinstance(items, list):
        errors["files"] = "must be a list of files"
        return assigned, ordered
    for index, item in enumerate(items):
        key = f"files[{index}]"
        if isinstance(item, str):
            item = {"storage_path": item}
        if not isinstance(item, dict):
            errors[key] = "must be an object with name and storage_path"
            continue
        try:
            path = input_path(item.get("storage_path", item.get("path")))
        except ValueError as exc:  # any name but control characters: the job gets it quoted
            errors[key] = str(exc)
            continue
        filename = _file_name_of(item)
        slot_name = item.get("name")
        if slot_name is not None and not isinstance(slot_name, str):
            errors[key] = "name (the template's file slot) must be a string"
            continue
        if slot_name is None:
            # An upload without a slot goes to the first free slot it fits.
            slot_name = next((n for n, s in slots.items()
                              if n not in assigned and _pattern_ok(s.get("patterns"), filename)), None)
            if slot_name is None:
                ordered.append(path)
                continue
        if slot_name not in slots:
            errors[key] = f"the template expects no file named {slot_name!r}"
            continue
        slot = slots[slot_name]
        key = f"files.{slot_name}"
        if slot_name in assigned:
            errors[key] = "given more than once"
            continue
        if not _pattern_ok(slot.get("patterns"), filename):
            errors[key] = f"{filename!r} does not match {', '.join(slot['patterns'])}"
            continue
        size = item.get("size")
        if size is None and stat is not None:
            try:
                size = stat(path).st_size
            except OSError:
                size = None
        if "max_size" in slot and isinstance(size, int) and size > parse_size(slot["max_size"]):
            errors[key] = f"is {size} bytes, larger than the limit of {slot['max_size']}"
            continue
        if slot.get("type") and item.get("file_type") and item["file_type"] != slot["type"]:
            errors[key] = f"must be a file of type {slot['type']}, got {item['file_type']}"
            continue
        assigned[slot_name] = path
        ordered.append(path)
    for name, slot in slots.items():
        if slot.get("required", True) and name not in assigned and f"files.{name}" not in errors:
            errors[f"files.{name}"] = "this file is required"
    return assigned, ordered


def _resolve_slurm(document, overrides, errors, default_job_name="job"):
    """Checked ``{template key: value}`` and the job's name."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        errors["overrides"] = "must be an object"
        overrides = {}
    overrides = {OVERRIDE_ALIASES.get(k, k): v for k, v in overrides.items()}
    settings = {key: slurm_setting(raw) for key, raw in (document.get("slurm") or {}).items()}
    checked = {}
    job_name = overrides.pop("job_name", overrides.pop("jobName", None))
    if job_name is None:
        job_name = default_job_name
    try:
        job_name = values.job_name(job_name)
    except ValueError as exc:
        errors["overrides.job_name"] = str(exc)
    for key in overrides:
        if key not in SLURM_SETTINGS:
            errors[f"overrides.{key}"] = "unknown setting"
    for key, (_option, kind) in SLURM_SETTINGS.items():
        spec = settings.get(key, {})
        field_name = f"overrides.{key}"
        if key in overrides and overrides[key] is not None and overrides[key] != "":
            value = overrides[key]
            if spec.get("fixed") and not _same(kind, value, spec.get("default")):
                errors[field_name] = f"fixed by the template to {spec.get('default')}"
                continue
        elif "default" in spec:
            value = spec["default"]
        else:
            continue
        try:
            value = _check_setting(key, kind, spec, value)
        except ValueError as exc:
            errors[field_name] = str(exc)
            continue
        checked[key] = value
    return checked, job_name


def _same(kind, a, b):
    try:
        return _measure(kind, a) == _measure(kind, b)
    except (ValueError, TypeError):
        return a == b


def _check_setting(key, kind, spec, value):
    if kind == "count":
        return values.count(value, spec.get("min", 0 if key == "gpus" else 1), spec.get("max"))
    if kind == "size":
        amount = parse_size(value)
        if amount < 1024 ** 2:
            raise ValueError("must be at least 1M")
        if "min" in spec and amount < parse_size(spec["min"]):
            raise ValueError(f"must be at least {spec['min']}")
        if "max" in spec and amount > parse_size(spec["max"]):
            raise ValueError(f"must be at most {spec['max']}")
        return slurm_memory(value)
    if kind == "duration":
        seconds = parse_slurm_time(value)
        if "min" in spec and seconds < parse_slurm_time(spec["min"]):
            raise ValueError(f"must be at least {spec['min']}")
        if "max" in spec and seconds > parse_slurm_time(spec["max"]):
            raise ValueError(f"must be at most {spec['max']}")
        return format_slurm_time(seconds)
    if kind == "gres":
        return values.gres(value)
    values.slurm_name(value)
    if spec.get("choices") and value not in spec["choices"]:
        raise ValueError("must be one of " + ", ".join(spec["choices"]))
    return value


def render(document, request, *, template_id, image=None, images=None, job_dir,
           apptainer_command="apptainer", extra_binds=(), stat=os.stat):
    """What a submit of ``document`` with ``request`` runs.

    ``request``: ``{"parameters": {name: value}, "files": [...], "overrides": {...}}``;
    ``image``: the resolved catalog image (dict with ``path``) or None; or
    ``images``: the image catalog, from which the newest image matching
    ``apptainer.image`` that is meant for the chosen partition is taken;
    ``job_dir``: the job's folder, where the body is saved for container jobs.
    Raises ``ValidationError`` listing every invalid field.
    """
    if not isinstance(request, dict):
        raise ValidationError("The request body must be a JSON object.")
    errors = {}
    unknown = set(request) - {"parameters", "files", "overrides"}
    for key in sorted(unknown):
        errors[key] = "unknown field"

    given = request.get("parameters") or {}
    if not isinstance(given, dict):
        errors["parameters"] = "must be an object of name: value"
        given = {}
    declared = {p["name"]: p for p in document.get("parameters", [])}
    for name in given:
        if name not in declared:
            errors[f"parameters.{name}"] = "the template has no such parameter"
    environment = {}
    params_out = {}
    for name, param in declared.items():
        value = given.get(name)
        if value is None or (value == "" and param["type"] != "string"):
            if "default" in param:
                value = param["default"]
            elif param.get("required"):
                errors[f"parameters.{name}"] = "this parameter is required"
                continue
            else:
                environment[parameter_env_name(name)] = ""
                params_out[name] = None
                continue
        try:
            value = coerce_parameter(param, value)
        except ValueError as exc:
            errors[f"parameters.{name}"] = str(exc)
            continue
        params_out[name] = value
        environment[parameter_env_name(name)] = environment_value(value)

    assigned, ordered = _check_files(document, request.get("files"), errors, stat=stat)
    for slot in document.get("files", []):
        environment[file_env_name(slot["name"])] = assigned.get(slot["name"], "")
    for index, path in enumerate(ordered):
        environment[f"INPUT_FILE_{index}"] = path
    environment["INPUT_FILE_COUNT"] = str(len(ordered))

    slurm_values, job_name = _resolve_slurm(document, request.get("overrides"), errors,
                                              default_job_name=template_id.rsplit(".", 1)[-1])
    container = document.get("apptainer")
    if container and images is not None:
        image = resolve_image(container["image"], images)
        partition = slurm_values.get("partition")
        if image is not None and partition:
            image = resolve_image(container["image"], images, partition=partition)
            if image is None:
                errors["image"] = (f"no image matching {container['image']!r} is meant for "
                                   f"partition {partition}")
    if container and image is None and "image" not in errors:
        errors["image"] = f"no valid image in the catalog matches {container['image']!r}"
    if errors:
        raise ValidationError(f"{len(errors)} value(s) are not acceptable for this template.",
                              errors=dict(sorted(errors.items())))

    version = document.get("version")
    environment["HPCPORTAL_TEMPLATE_ID"] = template_id
    environment["HPCPORTAL_TEMPLATE_VERSION"] = version
    spec = JobSpec(script=document["script"], script_path=posixpath.join(job_dir, BODY_NAME), name=job_name,
                   environment=environment,
                   **{_SPEC_FIELDS[key]: value for key, value in slurm_values.items()},
                   **(_container(container, image, job_dir, apptainer_command, extra_binds) if container else {}))
    try:
        script = render_batch_script(spec)
    except ValueError as exc:
        raise ValidationError(f"The job cannot be written safely: {exc}.",
                              errors={"script": str(exc)}) from None
    return Rendered(template={"id": template_id, "version": version}, slurm=slurm_values, job_name=job_name,
                    parameters=params_out, environment=environment, image=image if container else None,
                    script=script, body=spec.script, body_path=spec.script_path, spec=spec)


class Rendered(dict):
    """The render API's answer (a dict of its fields); ``spec``: the ``JobSpec`` a submit runs."""

    def __init__(self, *, spec, **fields):
        super().__init__(fields)
        self.spec = spec


def _container(container, image, job_dir, apptainer_command, extra_binds):
    """The ``JobSpec`` fields of a template's ``apptainer`` section."""
    options = list(container.get("options", []))
    if container.get("gpu") and "--nv" not in options:
        options.insert(0, "--nv")
    return {"image": image["path"], "apptainer": apptainer_command, "exec_options": tuple(options),
            "binds": (job_dir, *extra_binds, *container.get("binds", [])), "app": container.get("app"),
            "container_env": {k: environment_value(v) for k, v in (container.get("env") or {}).items()}}
