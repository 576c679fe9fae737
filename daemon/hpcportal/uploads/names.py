"""Untrusted names: file names and job ids from clients.

A file name becomes one path component under the user's folder, so anything
that could leave that folder or confuse a shell or a listing is refused with
a reason rather than silently rewritten: the user learns what was wrong and
the stored name is exactly the one they chose (after Unicode NFC
normalisation, so the same name typed on macOS and on Linux is one name).
"""

import re
import unicodedata

from ..errors import ValidationError

MAX_NAME_BYTES = 255
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The hidden folder of partial data sits beside the job folders.
PARTIAL_FOLDER = ".partial"
UNLINKED_FOLDER = "unlinked"


def _bad(field, reason):
    return ValidationError(f"Invalid {field}: {reason}.", errors={field: reason})


def clean_filename(value, field="filename"):
    """The NFC-normalised name, or ValidationError saying why it is refused."""
    if not isinstance(value, str):
        raise _bad(field, "must be a string")
    name = unicodedata.normalize("NFC", value)
    if name == "":
        raise _bad(field, "must not be empty")
    if "\x00" in name:
        raise _bad(field, "must not contain NUL characters")
    if "/" in name or "\\" in name:
        raise _bad(field, "must be a plain file name without '/' or '\\'")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise _bad(field, "must not contain control characters")
    if name.strip(".") == "":
        raise _bad(field, "must not consist only of dots")
    if name != name.strip():
        raise _bad(field, "must not start or end with white space")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise _bad(field, f"must be at most {MAX_NAME_BYTES} bytes long in UTF-8")
    return name


def clean_job_id(value, field="job_id"):
    """None, or a job id usable as a folder name."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        raise _bad(field, "must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'")
    if value in (".", ".."):
        raise _bad(field, "must not be '.' or '..'")
    if value == PARTIAL_FOLDER:
        raise _bad(field, f"'{PARTIAL_FOLDER}' is reserved")
    return value


def numbered(name, number):
    """``data.csv`` -> ``data (2).csv``, kept within the name length limit."""
    if number == 0:
        return name
    stem, dot, ext = name.rpartition(".")
    if not stem or not dot or len(ext) > 32:  # no (real) extension, or a dot-file
        stem, ext = name, ""
    else:
        ext = "." + ext
    suffix = f" ({number}){ext}"
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    encoded = stem.encode("utf-8")
    if len(encoded) > room:
        stem = encoded[:room].decode("utf-8", errors="ignore")
    return stem + suffix
