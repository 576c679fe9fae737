"""The catalog image a template's ``apptainer.image`` names."""

import fnmatch
import re

_IMAGE_VERSION_PART = re.compile(r"(\d+)")


def _natural_key(text):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in _IMAGE_VERSION_PART.split(text or "") if p]


def resolve_image(pattern, images, partition=None):
    """The valid image an ``apptainer.image`` names: an exact id, else the newest
    name/id glob match (by version, then name). ``images``: dicts with at least
    ``id``, ``name``; ``valid`` false ones are skipped. With ``partition``, only
    images meant for it (their ``partitions``, when they list any)."""
    if not pattern:
        return None
    candidates = [i for i in images if i.get("valid", True)]
    if partition:
        candidates = [i for i in candidates if not i.get("partitions") or partition in i["partitions"]]
    for image in candidates:
        if pattern in (image.get("id"), image.get("qualified_id")):
            return image
    lowered = pattern.lower()
    matches = [i for i in candidates
               if fnmatch.fnmatchcase(str(i.get("id", "")).lower(), lowered)
               or fnmatch.fnmatchcase(str(i.get("name", "")).lower(), lowered)
               or fnmatch.fnmatchcase(str(i.get("name", "")).lower(), lowered + ".sif")]
    if not matches:
        return None
    return max(matches, key=lambda i: (_natural_key(str(i.get("version") or "")), _natural_key(i.get("name", ""))))
