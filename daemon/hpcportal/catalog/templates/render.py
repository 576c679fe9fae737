"""Rendering: a request's values checked against a template, and the job they describe.

``render`` answers a ``Rendered`` (the render API's fields) whose ``spec`` is the
``slurm.job.JobSpec`` a submit runs; its ``script`` is that job's batch script,
written by ``slurm.script.render_batch_script`` as every job's is. The template's
script is saved at ``body_path`` and run from there; parameter values and file
paths reach it only as exported variables.
"""

import os
import posixpath

from ...errors import ValidationError
from ...slurm.job import JobSpec
from ...slurm.script import render_batch_script
from .files import check_files
from .images import resolve_image
from .parameters import coerce_parameter, environment_value, file_env_name, parameter_env_name
from .settings import SPEC_FIELDS, resolve_overrides

# Where a submit saves the template's script, in the job folder.
BODY_NAME = "script.sh"


def render(document, request, *, template_id, image=None, images=None, job_dir,
           apptainer_command="apptainer", extra_binds=(), stat=os.stat):
    """What a submit of ``document`` with ``request`` runs.

    ``request``: ``{"parameters": {name: value}, "files": [...], "overrides": {...}}``;
    ``image``: the resolved catalog image (dict with ``path``) or None; or
    ``images``: the image catalog, from which the newest image matching
    ``apptainer.image`` that is meant for the chosen partition is taken;
    ``job_dir``: the job's folder, where a submit saves the template's script.
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

    assigned, ordered = check_files(document, request.get("files"), errors, stat=stat)
    for slot in document.get("files", []):
        environment[file_env_name(slot["name"])] = assigned.get(slot["name"], "")
    for index, path in enumerate(ordered):
        environment[f"INPUT_FILE_{index}"] = path
    environment["INPUT_FILE_COUNT"] = str(len(ordered))

    slurm_values, job_name = resolve_overrides(document, request.get("overrides"), errors,
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
                   **{SPEC_FIELDS[key]: value for key, value in slurm_values.items()},
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
