"""One parser for each Slurm value a job request, a template or a user's ``#SBATCH``
line gives: sizes, memory, time limits, counts, names, generic resources, job names.

Each raises ValueError saying what is wrong (the caller names the field). Digits
are bounded everywhere: a size or time of hundreds of digits is refused here, not
turned into infinity by ``float()`` or refused by ``int()`` deeper down.
"""

import math
import re
from fractions import Fraction

MAX_SIZE = 1024 ** 6  # an exbibyte: larger than any node's memory or any input file
MAX_MEMORY_MB = 1024 ** 3  # a petabyte per node is surely a typo
MAX_TIME = 3650 * 86400
MAX_JOB_NAME = 128

SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
GRES = re.compile(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2}(,[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2})*\Z")
# Control characters, and the Unicode line and paragraph separators some readers take for newlines.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_SIZE = re.compile(r"^\s*(\d{1,20}(?:\.\d{1,20})?)\s*([KMGTP]?)(I?)(B?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_TIME = re.compile(
    r"^(?:(?P<days>\d{1,10})-(?P<dh>\d{1,10})(?::(?P<dm>\d{1,10}))?(?::(?P<ds>\d{1,10}))?"
    r"|(?P<a>\d{1,10})(?::(?P<b>\d{1,10}))?(?::(?P<c>\d{1,10}))?)\Z")
_COUNT = re.compile(r"^\s*([0-9]{1,30})\s*\Z")


def _size(value, default_unit):
    """The exact number of bytes (a Fraction) of a size; a bare number counts ``default_unit``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M, 16G or 2T")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        amount = Fraction(value * 1024 ** _POWERS[default_unit])
    else:
        match = _SIZE.match(value) if isinstance(value, str) else None
        if not match or (match.group(3) and not match.group(2)):
            raise ValueError(f"expected a size such as 512M, 16G or 2T, got {str(value)[:40]!r}")
        # Like Slurm, a unit means powers of 1024 whether written G, GB or GiB.
        unit = match.group(2).upper() or default_unit
        amount = Fraction(match.group(1)) * 1024 ** _POWERS[unit]
    if amount > MAX_SIZE:
        raise ValueError(f"{value!r} is larger than any node")
    return amount


def size_bytes(value, default_unit=""):
    """Bytes from ``16GB``/``16G``/``512M``/``1.5GiB``/a number (of ``default_unit``: bytes unless given)."""
    return math.floor(_size(value, default_unit))


def memory_megabytes(value, default_unit="M"):
    """Whole megabytes (rounded up) from a size; a bare number is megabytes, as for sbatch's ``--mem``."""
    megabytes = math.ceil(_size(value, default_unit) / 1024 ** 2)
    if megabytes < 1:
        raise ValueError("must be at least 1M")
    if megabytes > MAX_MEMORY_MB:
        raise ValueError("is larger than any node")
    return megabytes


def slurm_memory(value, default_unit="M"):
    """The size as ``--mem`` takes it: whole megabytes, written with the largest exact unit."""
    megabytes = memory_megabytes(value, default_unit)
    for unit, power in (("T", 2), ("G", 1)):
        if megabytes % 1024 ** power == 0:
            return f"{megabytes // 1024 ** power}{unit}"
    return f"{megabytes}M"


def time_seconds(value, allow_unlimited=True):
    """Seconds from every format sbatch's ``--time`` takes: ``M``, ``M:S``, ``H:M:S``,
    ``D-H``, ``D-H:M``, ``D-H:M:S``; a JSON integer is minutes. None for unlimited."""
    if isinstance(value, bool):
        raise ValueError("expected a time limit such as 01:00:00")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a time limit must be at least one minute")
        return _bounded_time(value * 60)
    if not isinstance(value, str):
        raise ValueError("expected a time limit such as 01:00:00")
    text = value.strip()
    if allow_unlimited and text.lower() in ("unlimited", "infinite"):
        return None
    match = _TIME.match(text)
    if not match:
        raise ValueError(f"expected a time limit of minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, "
                         f"got {str(value)[:40]!r}")
    g = match.groupdict()
    if g["days"] is not None:
        seconds = (int(g["days"]) * 86400 + int(g["dh"]) * 3600 + int(g["dm"] or 0) * 60
                   + int(g["ds"] or 0))
    elif g["c"] is not None:
        seconds = int(g["a"]) * 3600 + int(g["b"]) * 60 + int(g["c"])
    elif g["b"] is not None:
        seconds = int(g["a"]) * 60 + int(g["b"])
    else:
        seconds = int(g["a"]) * 60
    if seconds < 1:
        raise ValueError("a time limit must be positive")
    return _bounded_time(seconds)


def _bounded_time(seconds):
    if seconds > MAX_TIME:
        raise ValueError("a time limit must be at most ten years")
    return seconds


def format_time(seconds):
    """``D-HH:MM:SS`` (``HH:MM:SS`` under a day) as sbatch takes it; None is ``UNLIMITED``."""
    if seconds is None:
        return "UNLIMITED"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def slurm_time(value):
    """The time limit as ``--time`` takes it."""
    return format_time(time_seconds(value))


def count(value, minimum, maximum=None):
    """A whole number (a JSON integer, a whole float, or digits) within the bounds."""
    if isinstance(value, str):
        match = _COUNT.match(value)
        if match:
            value = int(match.group(1))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    if value < minimum:
        raise ValueError(f"must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum}")
    return value


def slurm_name(value):
    """A partition, account, QOS or reservation name."""
    if not isinstance(value, str) or not SLURM_NAME.match(value):
        raise ValueError("must be a name of letters, digits and . _ - (starting with a letter or digit)")
    return value


def gres(value):
    """A generic resource request such as ``gpu:2`` or ``gpu:a100:1``."""
    if not isinstance(value, str) or len(value) > 1024 or not GRES.match(value):
        raise ValueError("must look like gpu:2 or gpu:a100:1")
    return value


def job_name(value):
    """The job name as given: any printable text (Korean, spaces, quotes) of 1-128 characters."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_JOB_NAME:
        raise ValueError(f"must be at most {MAX_JOB_NAME} characters")
    if CONTROL.search(value):
        raise ValueError("must not contain line breaks, tabs or other control characters")
    return value


# Slurm's own bounds: MAX_ARRAY_INDEX is below its largest MaxArraySize (4000001).
MAX_ARRAY_INDEX = 4000000
MAX_JOB_ID = 2 ** 32 - 1
DEPENDENCY_TYPES = ("after", "afterany", "afterok", "afternotok", "aftercorr")
_ARRAY_PART = re.compile(r"^(\d{1,7})(?:-(\d{1,7})(?::(\d{1,7}))?)?\Z")
_DEPENDENCY_JOB = re.compile(r"^(\d{1,10})(?:_(\d{1,7}))?(?:\+(\d{1,7}))?\Z")


def array_size(value):
    """The number of tasks of an ``--array`` value such as ``0-9``, ``1,3,5-7``, ``0-15:4``
    or ``0-99%4`` (an index named twice counts once, as in Slurm)."""
    if not isinstance(value, str) or not value or len(value) > 1024 or value != value.strip():
        raise ValueError("must look like 0-9, 1,3,5-7 or 0-99%4")
    ranges, percent, throttle = value.partition("%")
    if percent and not (re.fullmatch(r"\d{1,7}", throttle) and int(throttle) >= 1):
        raise ValueError("the limit after % must be a whole number of at least 1, as in 0-99%4")
    parts = []
    for part in ranges.split(","):
        match = _ARRAY_PART.match(part)
        if not match:
            raise ValueError(f"{part[:40]!r} is not an index, a range (5-7) or a stepped range (0-15:4)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first:
            raise ValueError(f"the range {part} ends before it starts")
        if step < 1:
            raise ValueError(f"the step of {part} must be at least 1")
        if last > MAX_ARRAY_INDEX:
            raise ValueError(f"array indexes must be at most {MAX_ARRAY_INDEX}")
        parts.append(range(first, last + 1, step))
    total = sum(len(r) for r in parts)
    if len(parts) == 1 or total > 100000:
        return total  # so large that overlaps no longer matter: counted as written
    return len(set().union(*parts))


def array(value, max_size=None):
    """An ``--array`` value, checked; at most ``max_size`` tasks when given."""
    size = array_size(value)
    if max_size is not None and size > max_size:
        raise ValueError(f"has {size} tasks; at most {max_size} are allowed (jobs.max_array_size)")
    return value


def dependency_terms(value):
    """``[(type, job id)]`` of a ``--dependency`` value and how they combine (``"all"`` for ``,``,
    ``"any"`` for ``?``). Job ids are Slurm's, ``123`` or an array task ``123_4``; ``after``
    may add ``+minutes``; ``singleton`` stands alone as ``("singleton", None)``."""
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise ValueError("must look like afterok:123, afterany:123:124, afterok:123?afternotok:124 or singleton")
    if "," in value and "?" in value:
        raise ValueError("combine dependencies with ',' (all) or '?' (any), not both")
    combine = "any" if "?" in value else "all"
    terms = []
    for part in re.split(r"[,?]", value):
        if part == "singleton":
            terms.append(("singleton", None))
            continue
        kind, _, ids = part.partition(":")
        if kind not in DEPENDENCY_TYPES:
            raise ValueError(f"{part[:40]!r}: the type must be one of {', '.join(DEPENDENCY_TYPES)} "
                             "or singleton")
        if not ids:
            raise ValueError(f"{part[:40]!r} names no job (as in {kind}:123)")
        for job in ids.split(":"):
            match = _DEPENDENCY_JOB.match(job)
            if not match or int(match.group(1)) < 1 or int(match.group(1)) > MAX_JOB_ID:
                raise ValueError(f"{job[:40]!r} is not a job id (123, or an array task 123_4)")
            if match.group(3) is not None and kind != "after":
                raise ValueError(f"{job[:40]!r}: only after: takes +minutes")
            terms.append((kind, job))
    return terms, combine


def dependency(value):
    """A ``--dependency`` value, checked (see ``dependency_terms``)."""
    dependency_terms(value)
    return value
