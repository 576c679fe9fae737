"""Save a submitted job as a template of its user's own (``POST /api/slurm/jobs/{id}/template``).

What the job record keeps is enough: its Slurm values (as the template's
defaults), its image (by catalog id), the script it ran (``script.sh`` in the
job folder, without ``#SBATCH`` lines: their values are in the record already)
and its input files, each becoming a named file slot that accepts files like
it. A job made from a template keeps that template's parameters (defaulting to
the values the job used) and file slots, so its script still finds
``$PARAM_*`` and ``$FILE_*``. The template is written like any posted one
(``MyTemplates.create``): checked, as the user, indexed at once.
"""

import posixpath
import re

from ..catalog.my_templates import to_yaml
from ..errors import NotFound, ValidationError

SLURM_KEYS = (("partition", "partition"), ("nodes", "nodes"), ("cpus", "cpus"), ("memory", "memory"),
              ("time", "time"), ("account", "account"), ("qos", "qos"), ("gpus", "gpus"))
# The lines the template format refuses in a script (templates.format).
_SBATCH_LINE = re.compile(r"^[ \t]*#[ \t]*SBATCH")
_ENV_NAME = re.compile(r"[^A-Za-z0-9_]+")
_DOUBLE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")


def file_slot(path, taken):
    """A file slot for an input file: its name (``결과 파일.csv`` -> ``file_1``, ``mesh.msh`` -> ``mesh``)
    and patterns by its extension; the file's own name is the slot's label."""
    filename = posixpath.basename(path)
    lower = filename.lower()
    suffix = next((s for s in _DOUBLE_SUFFIXES if lower.endswith(s)), None) or posixpath.splitext(lower)[1]
    stem = filename[: len(filename) - len(suffix)] if suffix else filename
    base = _ENV_NAME.sub("_", stem).strip("_").lower()[:48]
    if not base or not base[0].isalpha():
        base = f"file_{base}" if base else "file"
    name, number = base, 1
    while name.upper() in taken or name == "file":
        name = f"{base}_{number}" if base != "file" else f"file_{number}"
        number += 1
    taken.add(name.upper())
    slot = {"name": name, "label": filename[:200], "required": True}
    if suffix and re.fullmatch(r"\.[a-z0-9._-]{1,20}", suffix):
        slot["patterns"] = [f"*{suffix}"]
    return slot


def script_without_directives(script):
    """The script without its ``#SBATCH`` lines (a template's resources live in ``slurm:``)."""
    return "".join(line for line in script.splitlines(keepends=True) if not _SBATCH_LINE.match(line))


def _template_parts(template, parameters):
    """File slots and parameters of the template a job was made from, defaults from the job."""
    files = []
    for spec in template.get("files") or []:
        slot = {k: v for k, v in spec.items() if k not in ("env", "max_size_bytes") and v is not None}
        files.append(slot)
    params = []
    for spec in template.get("parameters") or []:
        param = {k: v for k, v in spec.items() if k != "env" and v is not None}
        value = (parameters or {}).get(spec["name"])
        if value is not None and (spec["type"] != "choice" or value in (spec.get("choices") or [])):
            param["default"] = value
        params.append(param)
    return files, params


def build_document(job, script, template=None):
    """The template document (a dict) for ``job`` (``JobService.detail``) and its ``script``."""
    resources = job.get("resources") or {}
    slurm = {key: resources[field] for key, field in SLURM_KEYS if resources.get(field) is not None}
    if job.get("partition"):
        slurm["partition"] = job["partition"]
    if isinstance(slurm.get("time"), str) and slurm["time"].upper() in ("UNLIMITED", "INFINITE"):
        del slurm["time"]
    document = {
        "name": (job.get("name") or f"job {job['jobId']}")[:200],
        "version": "1.0.0",
        "description": f"Saved from job {job['jobId']} (submitted {job.get('submitted_at')}).",
        "slurm": slurm,
    }
    if template is not None:
        document["category"] = template.get("category") or "general"
        document["tags"] = list(template.get("tags") or [])
        document["description"] += f" Made from template {template['id']} {template['version']}."
    image = job.get("image") or {}
    if image.get("id"):
        document["apptainer"] = {"image": image["id"]}
        container = (template or {}).get("apptainer") or {}
        for key in ("app", "binds", "env", "gpu", "options"):
            if container.get(key):
                document["apptainer"][key] = container[key]
    if template is not None:
        files, parameters = _template_parts(template, job.get("parameters"))
    else:
        taken = set()
        files, parameters = [file_slot(path, taken) for path in job.get("files") or []], []
    if files:
        document["files"] = files
    if parameters:
        document["parameters"] = parameters
    document["script"] = script_without_directives(script)
    return document


class JobTemplates:
    """``jobs``: the JobService; ``catalog``: the TemplateCatalog; ``mine``: MyTemplates."""

    def __init__(self, jobs, catalog, mine):
        self._jobs = jobs
        self._catalog = catalog
        self._mine = mine

    def save(self, user, job_id, name=None):
        """The new template (as ``GET /api/v2/templates/{id}`` answers it) made from one of the user's jobs."""
        job = self._jobs.detail(user, job_id)
        if job["user"] != user.name:
            # An administrator may read others' jobs; a template is made from one's own.
            raise NotFound(f"There is no job {job_id} of yours.", code="job_not_found")
        script = job.get("user_script")
        if not script:
            raise NotFound(f"Job {job_id}'s script is no longer in its folder.", code="job_script_missing")
        template = None
        source = job.get("template")
        if source and source.get("id"):
            try:
                template = self._catalog.get(user, source["id"], version=source.get("version"))
            except NotFound:
                template = None  # gone since: the job's own files become the slots
        document = build_document(job, script, template)
        if name is not None:
            if not isinstance(name, str) or not name.strip() or len(name) > 200:
                raise ValidationError("'name' must be a display name of 1 to 200 characters.",
                                      errors={"name": "1 to 200 characters"})
            document["name"] = name.strip()
        return self._mine.create(user, to_yaml(document))
