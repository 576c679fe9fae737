"""Writing a job's batch script.

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

from . import values

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# Values allowed on an #SBATCH line or in a --bind: no space, quote, #, newline, ...
DIRECTIVE_VALUE = re.compile(r"^[A-Za-z0-9_.:,@%/+=-]{1,1024}\Z")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.@%+=/-]{0,4095}\Z")
CONTROL = values.CONTROL
MAX_PATH = 4096
# Jobs get the user's login environment, as a job submitted from a login node would.
JOB_SHEBANG = "#!/bin/bash -l"


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


def render_batch_script(spec):
    """The batch script of a ``JobSpec``: ``#SBATCH`` lines, the job's variables, and the
    command that runs the user's script (saved by the caller at ``spec.script_path``).
    Raises ValueError on a value no line can hold."""
    lines = [JOB_SHEBANG, *directive_lines(spec.directives())]
    # A command ends sbatch's directive parsing: nothing below can add an option.
    lines.append(": hpcportal batch options end here")
    lines += export_lines(spec.environment)
    command = [*interpreter_of(spec.script), spec.script_path]
    if spec.image is not None:
        lines += export_lines({f"APPTAINERENV_{name}": value for name, value in spec.container_env.items()})
        if {"--cleanenv", "--containall"} & set(spec.exec_options):
            # They drop the host environment; APPTAINERENV_ variables survive it.
            lines += [f'export APPTAINERENV_{name}="${{{name}}}"' for name in spec.environment]
        container = [spec.apptainer, "exec", *spec.exec_options]
        for bind in spec.binds:
            # apptainer splits --bind on commas: one path must stay one bind.
            if not bind_path_ok(bind):
                raise ValueError(f"unsafe bind path {bind!r}")
            container += ["--bind", bind]
        if spec.app:
            container += ["--app", spec.app]
        command = [*container, spec.image, *command]
    lines.append("exec " + " ".join(bash_quote(part) for part in command))
    return "\n".join(lines) + "\n"
