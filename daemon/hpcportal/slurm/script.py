"""Checking a job request and writing its batch script.

Every value that reaches an ``#SBATCH`` line is checked first: no control
character (so no value can add a line), and a value outside a plain character
set is written in double quotes with ``\\`` and ``"`` escaped, as sbatch reads
its directives (so spaces, ``#`` and quotes cannot add an option). The user's own
script is never pasted into the batch script: it is saved byte-for-byte as its
own file and run from there (inside ``apptainer exec`` when an image is
chosen), so nothing in its text can end a heredoc or add a directive.
"""

import posixpath
import re
import shlex

from ..errors import ValidationError
from . import values
# The one parser of each value, under the names callers of this module know.
from .values import job_name, slurm_memory, slurm_time  # noqa: F401

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# Values allowed on an #SBATCH line or in a --bind: no space, quote, #, newline, ...
DIRECTIVE_VALUE = re.compile(r"^[A-Za-z0-9_.:,@%/+=-]{1,1024}\Z")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.@%+=/-]{0,4095}\Z")
CONTROL = values.CONTROL
MAX_PATH = 4096

MAX_NODES = 100000
MAX_TASKS = 1000000
MAX_GPUS = 1024


def input_path(value):
    """An absolute path a job can be handed (quoted wherever it is written): any
    characters but control characters (newline, NUL, ...), normalised."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_PATH:
        raise ValueError("storage_path must be an absolute path")
    if CONTROL.search(value):
        raise ValueError("the path has line breaks or other control characters a job cannot be given")
    return posixpath.normpath(value)


def bind_path_ok(bind):
    """Whether ``bind`` (a path, or an administrator's ``src:dest:opts``) is one ``apptainer
    --bind``: apptainer splits the value on commas. Spaces are fine: it is one quoted argument."""
    return (isinstance(bind, str) and bind.startswith("/") and not CONTROL.search(bind)
            and "," not in bind)


def _given(body, key):
    value = body.get(key)
    return value is not None and value != ""


def check_resources(body, *, max_script_size, need_name=True, need_script=True):
    """The checked Slurm fields of a request body, or a ValidationError naming every bad field.

    Returns ``{"job_name", "partition", "nodes", "cpus", "memory", "time", "account",
    "qos", "gpus", "script"}`` with normalised values (None when not given).
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
            out["job_name"] = job_name(name)
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
    checks = (("memory", slurm_memory), ("time", slurm_time))
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
        raise ValidationError(_summary(errors), errors=errors)
    return out


def _summary(errors):
    first = next(iter(errors))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"The job request is not valid: {first} {errors[first]}{more}."


def directives_for(resources):
    """``[(option, value)]`` for the checked resources, in a stable order."""
    out = [("job-name", resources.get("job_name"))]
    for key, option in (("partition", "partition"), ("nodes", "nodes"), ("cpus", "ntasks-per-node"),
                        ("memory", "mem"), ("time", "time"), ("account", "account"), ("qos", "qos")):
        out.append((option, resources.get(key)))
    if resources.get("gpus"):
        out.append(("gres", f"gpu:{resources['gpus']}"))
    return [(option, value) for option, value in out if value is not None]


def bash_quote(value):
    """One-line bash quoting; control characters become ``$'\\xNN'`` escapes, so a
    value holding a newline never starts a line of its own in the script."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("a value cannot contain a NUL character")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return text
    if not re.search(r"[\x00-\x1f\x7f]", text):
        return shlex.quote(text)
    escaped = []
    for char in text:
        if char in ("\\", "'"):
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\x{ord(char):02x}")
        else:
            escaped.append(char)
    return "$'" + "".join(escaped) + "'"


def directive_value(value):
    """``value`` as sbatch reads it back from an ``#SBATCH`` line: plain, or in double
    quotes with ``\\`` and ``"`` escaped (sbatch's own rule; an unquoted space or ``#``
    would end the value). Raises ValueError on what no line can hold."""
    value = str(value)
    if DIRECTIVE_VALUE.match(value):
        return value
    if not value or CONTROL.search(value) or len(value) > 4096:
        raise ValueError(f"{value!r} cannot be written on an #SBATCH line")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def directive_lines(directives):
    """``#SBATCH`` lines for ``[(option, value)]``; a value of None is a flag (``--exclusive``)."""
    lines = []
    for option, value in directives:
        if not re.fullmatch(r"[a-z][a-z-]{0,40}", option):
            raise ValueError(f"unsafe #SBATCH option --{option}")
        if value is None:
            lines.append(f"#SBATCH --{option}")
            continue
        try:
            lines.append(f"#SBATCH --{option}={directive_value(value)}")
        except ValueError:
            raise ValueError(f"unsafe #SBATCH value for --{option}: {value!r}") from None
    return lines


def export_lines(environment):
    lines = []
    for name, value in environment.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        lines.append(f"export {name}={bash_quote(value)}")
    return lines


def interpreter_of(body):
    """How to run the user's script: its ``#!`` line's interpreter (and one argument,
    as the kernel does), else bash. Running it through the interpreter instead of
    executing the file works on filesystems mounted noexec too."""
    first = body.split("\n", 1)[0]
    if first.startswith("#!"):
        parts = first[2:].strip().split(None, 1)
        if parts:
            return parts
    return ["/bin/bash"]


def build_batch_script(directives, job_options, environment, *, body, body_path, image_path=None,
                       apptainer_command="apptainer", exec_options=(), binds=()):
    """The batch script: ``#SBATCH`` lines, the portal's variables, and the command
    that runs the user's script (saved by the caller at ``body_path``).

    ``directives``: the job's resources; ``job_options``: the portal's own
    (output, error, chdir, comment, export). Raises ValueError on an unsafe value.
    """
    lines = ["#!/bin/bash -l"]
    lines += directive_lines(list(directives) + list(job_options))
    # A command ends sbatch's directive parsing: nothing below can add an option.
    lines.append(": hpcportal batch options end here")
    lines += export_lines(environment)
    command = [*interpreter_of(body), body_path]
    if image_path is not None:
        container = [apptainer_command, "exec", *exec_options]
        for bind in binds:
            if not bind_path_ok(bind):
                raise ValueError(f"unsafe bind path {bind!r}")
            container += ["--bind", bind]
        command = [*container, image_path, *command]
    lines.append("exec " + " ".join(bash_quote(part) for part in command))
    return "\n".join(lines) + "\n"


def add_job_options(rendered_script, job_options, environment):
    """A script rendered by the template catalog, with the portal's own options and
    variables added: after its ``#!`` line and after its end-of-options marker."""
    lines = rendered_script.split("\n")
    if not lines or not lines[0].startswith("#!"):
        raise ValueError("a rendered script must start with #!")
    shebang = "#!/bin/bash -l" if lines[0].strip() == "#!/bin/bash" else lines[0]
    marker = next((i for i, line in enumerate(lines) if line.startswith(": hpcportal")), None)
    if marker is None:
        raise ValueError("a rendered script must end its options with the ': hpcportal' marker")
    out = [shebang, *directive_lines(job_options), *lines[1:marker + 1], *export_lines(environment),
           *lines[marker + 1:]]
    return "\n".join(out)
