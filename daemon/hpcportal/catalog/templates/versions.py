"""Template versions: semantic versions (semver 2.0) and their precedence."""

import re

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")


def parse_semver(version):
    match = _SEMVER.match(version or "")
    if not match:
        raise ValueError(f"{version!r} is not a semantic version such as 1.2.0")
    major, minor, patch, pre, _build = match.groups()
    return int(major), int(minor), int(patch), pre


def semver_key(version):
    """Sort key by semver precedence (build metadata ignored; invalid sorts first)."""
    try:
        major, minor, patch, pre = parse_semver(version)
    except ValueError:
        return (-1, -1, -1, 0, ())
    if pre is None:
        # A release ranks above all its pre-releases.
        return (major, minor, patch, 1, ())
    idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, 0, idents)


def sort_versions(versions):
    return sorted(versions, key=semver_key)
