"""The ``#SBATCH`` lines of a user's own script, read as sbatch reads them.

The portal runs the user's script from its own batch script, so sbatch never
sees the user's directives; this module reads them instead, checks each against
an allow-list and each value with the same checks as the request's fields, and
hands them back as ``(option, value)`` pairs for the portal's batch script.

sbatch's rules (Slurm 22.05, ``_opt_batch_script``): directives are the lines
starting with ``#SBATCH`` (or the old ``#SLURM``) before the first line that is
neither blank nor a comment; one line may hold several arguments, split on
whitespace outside quotes (``"`` or ``'``), ``\\`` escapes the next character,
and an unquoted ``#`` starts a comment.
"""

import re
from dataclasses import dataclass

from ..errors import ValidationError
from . import values

MAGIC_WORDS = ("#SBATCH", "#SLURM")

_COUNT = re.compile(r"^[0-9]{1,9}\Z")
_WORDS = {
    "mail-type": {"NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT", "TIME_LIMIT",
                  "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS"},
    "hint": {"compute_bound", "memory_bound", "multithread", "nomultithread"},
}


def _count(value):
    if not _COUNT.match(value) or int(value) < 1:
        raise ValueError("must be a whole number of at least 1")
    return str(int(value))


def _pattern(regex, example):
    compiled = re.compile(regex + r"\Z")

    def check(value):
        if not compiled.match(value) or len(value) > 1024:
            raise ValueError(f"must look like {example}")
        return value
    return check




def _words(option):
    def check(value):
        words = value.split(",")
        unknown = [w for w in words if w not in _WORDS[option]]
        if unknown or not value:
            raise ValueError(f"must be among {', '.join(sorted(_WORDS[option]))}")
        return value
    return check


def _exclusive(value):
    if value not in ("user", "mcs"):
        raise ValueError("takes no value, or user or mcs")
    return value


def _checked(convert):
    def check(value):
        return str(convert(value))
    return check


_GPUS = _pattern(r"([A-Za-z0-9_.-]{1,64}:)?[0-9]{1,6}", "2 or a100:2")
_HOSTS = _pattern(r"[A-Za-z0-9_.,\[\]-]+", "node[01-04],node07")

# long option: (short option, how it takes a value, check). The value kinds are
# getopt's: "required" (``--opt=v``, ``--opt v``, ``-Xv``, ``-X v``), "optional"
# (only ``--opt=v``) and "none" (a flag).
ALLOWED = {
    "job-name": ("J", "required", values.job_name),
    "partition": ("p", "required", values.slurm_name),
    "account": ("A", "required", values.slurm_name),
    "qos": ("q", "required", values.slurm_name),
    "reservation": (None, "required", values.slurm_name),
    "wckey": (None, "required", values.slurm_name),
    "nodes": ("N", "required", _pattern(r"[0-9]{1,6}(-[0-9]{1,6})?", "2 or 2-4")),
    "ntasks": ("n", "required", _count),
    "ntasks-per-node": (None, "required", _count),
    "ntasks-per-socket": (None, "required", _count),
    "ntasks-per-core": (None, "required", _count),
    "ntasks-per-gpu": (None, "required", _count),
    "cpus-per-task": ("c", "required", _count),
    "cpus-per-gpu": (None, "required", _count),
    "mincpus": (None, "required", _count),
    "sockets-per-node": (None, "required", _count),
    "cores-per-socket": (None, "required", _count),
    "threads-per-core": (None, "required", _count),
    "mem": (None, "required", _checked(values.slurm_memory)),
    "mem-per-cpu": (None, "required", _checked(values.slurm_memory)),
    "mem-per-gpu": (None, "required", _checked(values.slurm_memory)),
    "tmp": (None, "required", _checked(values.slurm_memory)),
    "time": ("t", "required", _checked(values.slurm_time)),
    "time-min": (None, "required", _checked(values.slurm_time)),
    "gres": (None, "required", values.gres),
    "gpus": ("G", "required", _GPUS),
    "gpus-per-node": (None, "required", _GPUS),
    "gpus-per-task": (None, "required", _GPUS),
    "gpus-per-socket": (None, "required", _GPUS),
    "constraint": ("C", "required", _pattern(r"[A-Za-z0-9_.&|,:*\[\]()!-]+", "intel&ib")),
    "licenses": ("L", "required", _pattern(r"[A-Za-z0-9_.@-]+(:[0-9]+)?([,|][A-Za-z0-9_.@-]+(:[0-9]+)?)*",
                                          "matlab:1,ansys")),
    "array": ("a", "required", values.array),
    "dependency": ("d", "required", values.dependency),
    "begin": ("b", "required", _pattern(r"[A-Za-z0-9:+./-]+", "now+1hour or 2026-01-31T08:00")),
    "deadline": (None, "required", _pattern(r"[A-Za-z0-9:+./-]+", "2026-01-31T08:00")),
    "mail-type": (None, "required", _words("mail-type")),
    "mail-user": (None, "required", _pattern(r"[A-Za-z0-9_.+-]+(@[A-Za-z0-9.-]+)?", "alice@example.org")),
    "nice": (None, "optional", _pattern(r"-?[0-9]{1,9}", "100")),
    "hint": (None, "required", _words("hint")),
    "nodelist": ("w", "required", _HOSTS),
    "exclude": ("x", "required", _HOSTS),
    "signal": (None, "required", _pattern(r"(R?B?:)?[A-Za-z0-9]{1,12}(@[0-9]{1,6})?", "B:USR1@60")),
    "exclusive": (None, "optional", _exclusive),
    "oversubscribe": ("s", "none", None),
    "overcommit": ("O", "none", None),
    "contiguous": (None, "none", None),
    "hold": ("H", "none", None),
    "requeue": (None, "none", None),
    "no-requeue": (None, "none", None),
}
_SHORT = {short: option for option, (short, _kind, _check) in ALLOWED.items() if short}
# Refused options sbatch knows by a short letter: named in full in the answer.
_KNOWN_SHORT = {"o": "output", "e": "error", "D": "chdir", "i": "input", "W": "wait", "k": "no-kill",
                "M": "clusters", "F": "nodefile", "m": "distribution", "B": "extra-node-info",
                "S": "core-spec", "Q": "quiet", "v": "verbose", "h": "help", "V": "version"}
# The body's field speaks for these options too: a body --mem also replaces the script's --mem-per-cpu.
COVERS = {"mem": ("mem", "mem-per-cpu", "mem-per-gpu")}


@dataclass(frozen=True)
class Directive:
    option: str          # the long name, without dashes
    value: object        # the checked value (a str), or None for a flag
    line: int            # 1-based line number in the user's script


class DirectiveError(ValueError):
    def __init__(self, line, message):
        super().__init__(f"line {line}: {message}")
        self.line = line


def directive_lines(text):
    """``[(line number, text after the magic word)]`` of the leading directive block."""
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        word = next((w for w in MAGIC_WORDS if line.startswith(w)), None)
        if word is not None:
            found.append((number, line[len(word):]))
            continue
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            break  # the first command: sbatch reads no further
    return found


def split_arguments(line, number):
    """The arguments of one directive line, split as sbatch's ``_get_argument`` does."""
    arguments = []
    index, length = 0, len(line)
    while True:
        while index < length and line[index].isspace():
            index += 1
        if index >= length:
            return arguments
        if line[index] == ":":
            raise DirectiveError(number, "an argument may not start with ':'")
        argument, quote, escaped = [], None, False
        while index < length and (quote or not line[index].isspace()):
            char = line[index]
            index += 1
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
                continue
            elif quote:
                if char == quote:
                    quote = None
                    continue
            elif char in "\"'":
                quote = char
                continue
            elif char == "#":
                index = length  # an unquoted # starts a comment
                break
            argument.append(char)
        if quote:
            raise DirectiveError(number, f"unmatched {quote}")
        if argument:
            arguments.append("".join(argument))


def _refused(option, number):
    allowed = ", ".join(f"--{name}" for name in sorted(ALLOWED))
    return DirectiveError(number, f"the option {option} is not allowed in a portal job (allowed: {allowed})")


def _one(arguments, position, number):
    """(Directive or directives, next position) for the argument at ``position``."""
    argument = arguments[position]
    if argument.startswith("--") and len(argument) > 2:
        name, has_value, value = argument[2:].partition("=")
        if name not in ALLOWED:
            raise _refused(f"--{name}", number)
        _short, kind, check = ALLOWED[name]
        if kind == "none":
            if has_value:
                raise DirectiveError(number, f"--{name} takes no value")
            return [Directive(name, None, number)], position + 1
        if kind == "optional" and not has_value:
            return [Directive(name, None, number)], position + 1
        if not has_value:
            if position + 1 >= len(arguments):
                raise DirectiveError(number, f"--{name} needs a value")
            value, position = arguments[position + 1], position + 1
        return [_checked_directive(name, value, check, number)], position + 1
    if argument.startswith("-") and len(argument) > 1 and argument[1] != "-":
        found = []
        letters = argument[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            name = _SHORT.get(letter)
            if name is None:
                known = _KNOWN_SHORT.get(letter)
                raise _refused(f"-{letter}" + (f" (--{known})" if known else ""), number)
            _short, kind, check = ALLOWED[name]
            if kind == "none":
                found.append(Directive(name, None, number))
                continue
            value = letters
            if not value:
                if position + 1 >= len(arguments):
                    raise DirectiveError(number, f"-{letter} needs a value")
                value, position = arguments[position + 1], position + 1
            found.append(_checked_directive(name, value, check, number))
            break
        return found, position + 1
    raise DirectiveError(number, f"{argument!r} is not an option (sbatch would refuse the script)")


def _checked_directive(name, value, check, number):
    try:
        return Directive(name, check(value), number)
    except ValueError as exc:
        raise DirectiveError(number, f"--{name}={value}: {exc}") from None


def parse(text):
    """The script's directives, checked; raises DirectiveError at the first refused one."""
    found = []
    for number, line in directive_lines(text):
        arguments = split_arguments(line, number)
        position = 0
        while position < len(arguments):
            directives, position = _one(arguments, position, number)
            found.extend(directives)
    return found


def script_options(text, field="script"):
    """``{option: Directive}`` of the script's directives (the last of an option wins, as in
    sbatch); a ValidationError (400) naming the option and its line otherwise."""
    try:
        directives = parse(text)
    except DirectiveError as exc:
        raise ValidationError(f"The script's #SBATCH {exc}.", errors={field: f"#SBATCH {exc}"}) from None
    options = {}
    for directive in directives:
        options.pop(directive.option, None)
        options[directive.option] = directive
    return options


# The script's options the job row keeps, by the row's names.
_RECORDED = {"job-name": "job_name", "partition": "partition", "nodes": "nodes", "ntasks-per-node": "cpus",
             "mem": "memory", "time": "time", "account": "account", "qos": "qos",
             "dependency": "dependency", "array": "array"}


def recorded_values(script):
    """``{row field: value}`` of the script's directives that the job row has a column for."""
    out = {}
    for option, key in _RECORDED.items():
        directive = script.get(option)
        if directive is None or directive.value is None:
            continue
        value = directive.value
        if key in ("nodes", "cpus"):
            if not value.isdigit():
                continue  # a range such as 2-4 has no single number to record
            value = int(value)
        out[key] = value
    gres = script.get("gres")
    match = re.fullmatch(r"gpu:([0-9]+)", gres.value) if gres is not None else None
    if match:
        out["gpus"] = int(match.group(1))
    return out
