"""A dashboard submit's body read into checked values, and into the job it describes.

First the JSON types of its fields (``type_errors``): a field of the wrong type
(``templateId`` as an object, ``parameters`` as a list) is a 400 naming the
field, never a 500 from code that trusted its type. Then the Slurm fields'
values (``check_resources``), each by the one parser of ``slurm.values``; then
``job_spec`` describes the body's job as a ``slurm.job.JobSpec`` (a template's
job comes from the template's render instead).
"""

from ..errors import ValidationError
from ..slurm import values
from ..slurm.job import JobSpec

MAX_NODES = 100000
MAX_TASKS = 1000000
MAX_GPUS = 1024

_STRING = (str,)
_NUMBER_OR_TEXT = (int, float, str)

# field: (accepted Python types of the decoded JSON, what the answer says)
FIELD_TYPES = {
    "jobName": (_STRING, "must be a string"),
    "partition": (_STRING, "must be a string"),
    "account": (_STRING, "must be a string"),
    "qos": (_STRING, "must be a string"),
    "nodes": (_NUMBER_OR_TEXT, "must be a whole number"),
    "cpus": (_NUMBER_OR_TEXT, "must be a whole number"),
    "gpus": (_NUMBER_OR_TEXT, "must be a whole number"),
    "memory": (_NUMBER_OR_TEXT, "must be a size such as 16G or a number of megabytes"),
    "time": (_NUMBER_OR_TEXT, "must be a time such as 01:00:00 or a number of minutes"),
    "dependency": (_STRING, "must be a string such as afterok:123 or singleton"),
    "array": (_STRING, "must be a string such as 0-9, 1,3,5-7 or 0-99%4"),
    "script": (_STRING, "must be a string"),
    "jobId": (_STRING, "must be a string"),
    "files": ((list,), "must be a list of files"),
    "fileIds": ((list,), "must be a list of file ids"),
    "apptainerImage": ((dict,), "must be an object with the image's id"),
    "templateId": (_STRING, "must be a string (a template's id)"),
    "templateVersion": (_STRING, "must be a string (a template version such as 1.2.0)"),
    "parameters": ((dict,), "must be an object of name: value"),
}


def type_errors(body):
    """``{field: reason}`` for every field of ``body`` whose JSON type is wrong
    (null and absent are left to the value checks: a field may be optional)."""
    errors = {}
    for field, (types, reason) in FIELD_TYPES.items():
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            if field == "apptainerImage" and value == "":
                continue  # the dashboard sends "" for "no image"
            errors[field] = reason
    return errors


def _given(body, key):
    value = body.get(key)
    return value is not None and value != ""


def check_resources(body, *, max_script_size, max_array_size=None, need_name=True, need_script=True):
    """The checked Slurm fields of a request body, or a ValidationError naming every bad field.

    Returns ``{"job_name", "partition", "nodes", "cpus", "memory", "time", "account",
    "qos", "gpus", "dependency", "array", "script"}`` with normalised values (None when not given).
    """
    errors = {}
    out = {}
    name = body.get("jobName")
    if name is None or name == "":
        if need_name:
            errors["jobName"] = "is required"
        out["job_name"] = None
    else:
        try:
            out["job_name"] = values.job_name(name)
        except ValueError as exc:
            errors["jobName"] = str(exc)
    for key in ("partition", "account", "qos"):
        if not _given(body, key):
            out[key] = None
            continue
        try:
            out[key] = values.slurm_name(body[key])
        except ValueError as exc:
            errors[key] = str(exc)
    for key, minimum, maximum in (("nodes", 1, MAX_NODES), ("cpus", 1, MAX_TASKS), ("gpus", 0, MAX_GPUS)):
        if not _given(body, key):
            out[key] = None
            continue
        try:
            out[key] = values.count(body[key], minimum, maximum)
        except ValueError as exc:
            errors[key] = str(exc)
    checks = (("memory", values.slurm_memory), ("time", values.slurm_time), ("dependency", values.dependency),
              ("array", lambda value: values.array(value, max_array_size)))
    for key, check in checks:
        if not _given(body, key):
            out[key] = None
            continue
        try:
            out[key] = check(body[key])
        except ValueError as exc:
            errors[key] = str(exc)
    script = body.get("script")
    if script is None or (isinstance(script, str) and not script.strip()):
        if need_script:
            errors["script"] = "is required"
        out["script"] = None
    elif not isinstance(script, str):
        errors["script"] = "must be a string"
    elif "\x00" in script:
        errors["script"] = "must not contain NUL characters"
    elif len(script.encode("utf-8")) > max_script_size:
        errors["script"] = f"is larger than the limit of {max_script_size} bytes"
    else:
        out["script"] = script
    if errors:
        raise ValidationError(summary(errors), errors=errors)
    return out


def check_array_size(array, max_array_size):
    """A ValidationError naming ``array`` when the job (from the body, the script's
    ``#SBATCH --array`` or a template) has more tasks than the site allows."""
    if array is None:
        return
    try:
        values.array(array, max_array_size)
    except ValueError as exc:
        raise ValidationError(summary({"array": str(exc)}), errors={"array": str(exc)}) from None


def summary(errors):
    first = next(iter(errors))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"The job request is not valid: {first} {errors[first]}{more}."


def job_spec(resources, *, script_path, environment, image=None, apptainer="apptainer", binds=()):
    """The job a dashboard body describes (``resources`` from ``check_resources``); with
    ``image`` (the catalog's entry), run in that container, on its GPUs when it has any."""
    exec_options = ("--nv",) if image and (image.get("gpu") or resources.get("gpus")) else ()
    return JobSpec(script=resources["script"], script_path=script_path, name=resources.get("job_name"),
                   partition=resources.get("partition"), nodes=resources.get("nodes"),
                   tasks_per_node=resources.get("cpus"), memory=resources.get("memory"),
                   time=resources.get("time"), account=resources.get("account"), qos=resources.get("qos"),
                   gpus=resources.get("gpus"), dependency=resources.get("dependency"),
                   array=resources.get("array"), environment=dict(environment),
                   image=image["path"] if image else None, apptainer=apptainer, exec_options=exec_options,
                   binds=tuple(binds) if image else ())
