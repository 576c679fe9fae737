"""A template's ``slurm`` section: each setting's bounds, and a request's overrides
checked against them. Every value is read by the one parser of ``slurm.values``."""

from ...slurm import values

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
    "dependency": ("dependency", "dependency"),
    "array": ("array", "array"),
}
# Template key -> JobSpec field.
SPEC_FIELDS = {"partition": "partition", "nodes": "nodes", "cpus": "tasks_per_node",
                "cpus_per_task": "cpus_per_task", "memory": "memory", "time": "time", "gpus": "gpus",
                "gres": "gres", "account": "account", "qos": "qos",
               "dependency": "dependency", "array": "array"}
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
    if kind == "dependency":
        return values.dependency(value)
    if kind == "array":
        return values.array_size(value)  # its size is bounded by jobs.max_array_size at submit
    return value


def setting_problems(key, spec):
    """Cross-checks of one slurm setting (the schema has checked the shapes)."""
    kind = SLURM_SETTINGS[key][1]
    problems = []
    path = f"slurm.{key}"
    try:
        low = _measure(kind, spec["min"]) if "min" in spec else None
        high = _measure(kind, spec["max"]) if "max" in spec else None
        default = _measure(kind, spec["default"]) if "default" in spec else None
    except ValueError as exc:
        return [(path, str(exc))]
    if low is not None and high is not None and low > high:
        problems.append((path, "min is larger than max"))
    if default is not None:
        if low is not None and default < low:
            problems.append((f"{path}.default", f"the default is below the minimum {spec['min']}"))
        if high is not None and default > high:
            problems.append((f"{path}.default", f"the default is above the maximum {spec['max']}"))
        if spec.get("choices") and spec["default"] not in spec["choices"]:
            problems.append((f"{path}.default", "the default is not one of the choices"))
    if spec.get("fixed") and "default" not in spec:
        problems.append((path, "fixed: true needs a default"))
    return problems


def resolve_overrides(document, overrides, errors, default_job_name="job"):
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
    if kind == "dependency":
        return values.dependency(value)
    if kind == "array":
        values.array_size(value)
        return value
    values.slurm_name(value)
    if spec.get("choices") and value not in spec["choices"]:
        raise ValueError("must be one of " + ", ".join(spec["choices"]))
    return value
