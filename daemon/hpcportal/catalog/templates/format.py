"""A template file read and checked: YAML with line and column for every problem,
the JSON Schema ``template_schema.json`` (shipped beside the catalog, served at
``GET /api/v2/templates/schema``), then cross-checks the schema cannot express.
Never raises for a bad document: an invalid template is kept with its problems listed."""

import datetime
import functools
import importlib.resources
import json
import math
import os
import re
from dataclasses import dataclass, field

import jsonschema
import yaml

from .. import safe_yaml
from .ids import LOCAL_ID, local_id_from_filename, source_of, template_id
from .parameters import coerce_parameter
from .settings import parse_size, setting_problems, slurm_setting

# The category of a template that names none.
DEFAULT_CATEGORY = "general"
_SCRIPT_REFERENCE = re.compile(r"\$\{?((?:PARAM|FILE)_[A-Za-z0-9_]+)")
_SBATCH_LINE = re.compile(r"^[ \t]*#[ \t]*SBATCH", re.MULTILINE)
# The schema file lies in the catalog package, beside this one.
_CATALOG = __package__.rpartition(".")[0]


@functools.lru_cache(maxsize=1)
def schema():
    """The template JSON Schema (a dict; do not modify)."""
    text = importlib.resources.files(_CATALOG).joinpath("template_schema.json").read_text("utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _validator():
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


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
    if isinstance(document.get("id"), str) and LOCAL_ID.match(document["id"]):
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
        for path, message in setting_problems(key, slurm_setting(raw)):
            errors.append(_problem(path, message, _line_of(root, ["slurm", key])))
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
