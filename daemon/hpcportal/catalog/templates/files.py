"""The files of a render request, matched to the template's file slots."""

import fnmatch
import os
import posixpath

from ...slurm.script import input_path
from .settings import parse_size


def _file_name_of(item):
    for key in ("filename", "original_name"):
        if isinstance(item.get(key), str) and item[key]:
            return item[key]
    path = item.get("storage_path") or item.get("path")
    return posixpath.basename(path) if isinstance(path, str) else ""


def _pattern_ok(patterns, filename):
    return not patterns or any(fnmatch.fnmatchcase(filename.lower(), p.lower()) for p in patterns)


def check_files(document, items, errors, stat=os.stat):
    """``{slot name: path}`` and the ordered paths, filling ``errors``."""
    slots = {f["name"]: f for f in document.get("files", [])}
    assigned, ordered = {}, []
    if items is None:
        items = []
    if isinstance(items, dict):
        items = [dict(v, name=k) if isinstance(v, dict) else {"name": k, "storage_path": v}
                 for k, v in items.items()]
    if not isinstance(items, list):
        errors["files"] = "must be a list of files"
        return assigned, ordered
    for index, item in enumerate(items):
        key = f"files[{index}]"
        if isinstance(item, str):
            item = {"storage_path": item}
        if not isinstance(item, dict):
            errors[key] = "must be an object with name and storage_path"
            continue
        try:
            path = input_path(item.get("storage_path", item.get("path")))
        except ValueError as exc:  # any name but control characters: the job gets it quoted
            errors[key] = str(exc)
            continue
        filename = _file_name_of(item)
        slot_name = item.get("name")
        if slot_name is not None and not isinstance(slot_name, str):
            errors[key] = "name (the template's file slot) must be a string"
            continue
        if slot_name is None:
            # An upload without a slot goes to the first free slot it fits.
            slot_name = next((n for n, s in slots.items()
                              if n not in assigned and _pattern_ok(s.get("patterns"), filename)), None)
            if slot_name is None:
                ordered.append(path)
                continue
        if slot_name not in slots:
            errors[key] = f"the template expects no file named {slot_name!r}"
            continue
        slot = slots[slot_name]
        key = f"files.{slot_name}"
        if slot_name in assigned:
            errors[key] = "given more than once"
            continue
        if not _pattern_ok(slot.get("patterns"), filename):
            errors[key] = f"{filename!r} does not match {', '.join(slot['patterns'])}"
            continue
        size = item.get("size")
        if size is None and stat is not None:
            try:
                size = stat(path).st_size
            except OSError:
                size = None
        if "max_size" in slot and isinstance(size, int) and size > parse_size(slot["max_size"]):
            errors[key] = f"is {size} bytes, larger than the limit of {slot['max_size']}"
            continue
        if slot.get("type") and item.get("file_type") and item["file_type"] != slot["type"]:
            errors[key] = f"must be a file of type {slot['type']}, got {item['file_type']}"
            continue
        assigned[slot_name] = path
        ordered.append(path)
    for name, slot in slots.items():
        if slot.get("required", True) and name not in assigned and f"files.{name}" not in errors:
            errors[f"files.{name}"] = "this file is required"
    return assigned, ordered
