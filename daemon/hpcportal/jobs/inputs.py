"""The input files of a submission: the user's own uploads, files others shared with
the user (read in place), or paths under the data roots.

A file name may hold anything an upload accepts (spaces, parentheses, commas,
Korean letters, the uploads' own clash names ``name (1).ext``): the path only
ever reaches the job quoted (``INPUT_FILE_n``, a ``--bind`` argument). What no
quoting makes safe (control characters: newline, NUL, ...) is refused, and so is
a path the user may not read.
"""

import os
import subprocess

from ..slurm import script as batch
from ..slurm.runner import as_user

MAX_FILES = 1000


class InputFiles:
    """``uploads``: the uploads area; ``data_roots``: the ``slurm.data_roots`` setting."""

    def __init__(self, uploads, data_roots):
        self._uploads = uploads
        self._data_roots = tuple(data_roots)

    def check(self, user, body, errors):
        """``(paths, template_files)``: the absolute paths of the user's files, in the
        order given, and the entries a template's file slots take; fills ``errors``."""
        paths = []
        template_files = []
        given = body.get("files")
        ids = body.get("fileIds")
        items = []
        if given not in (None, []):
            if not isinstance(given, list):
                errors["files"] = "must be a list of files"
            else:
                items += [("files", i, item) for i, item in enumerate(given)]
        if ids not in (None, []):
            if not isinstance(ids, list):
                errors["fileIds"] = "must be a list of file ids"
            else:
                items += [("fileIds", i, {"file_id": item}) for i, item in enumerate(ids)]
        if len(items) > MAX_FILES:
            errors["files"] = f"at most {MAX_FILES} files per job"
            return [], []
        for field, index, item in items:
            key = f"{field}[{index}]"
            if isinstance(item, str) and field == "files":
                item = {"storage_path": item}
            if not isinstance(item, dict):
                errors[key] = "must be an object with storage_path or file_id"
                continue
            slot = item.get("name")
            if slot is not None and not isinstance(slot, str):
                errors[key] = "name (the template's file slot) must be a string"
                continue
            try:
                path = self.own_file(user, item)
            except ValueError as exc:
                errors[key] = str(exc)
                continue
            paths.append(path)
            entry = {"storage_path": path}
            for extra in ("filename", "size", "file_type"):
                if extra in item:
                    entry[extra] = item[extra]
            if slot is not None:
                entry["name"] = slot
            template_files.append(entry)
        return paths, template_files

    def own_file(self, user, item):
        """The normalised path of one file the user may hand to a job; ValueError says why not."""
        file_id = item.get("file_id", item.get("fileId", item.get("id")))
        path = item.get("storage_path", item.get("path"))
        if file_id not in (None, "") and isinstance(file_id, str):
            found = self._uploads.file_for_user(user.name, file_id)
            shared = None if found else self._uploads.shared_file(user, file_id=file_id)
            if found is None and shared is None:
                raise ValueError(f"you have no uploaded file {file_id!r}")
            found = found or shared
            if path not in (None, "") and (not isinstance(path, str)
                                           or os.path.normpath(path) != os.path.normpath(found["storage_path"])):
                raise ValueError(f"file {file_id!r} is not at {path!r}")
            return self._readable_share(user, shared) if shared else batch.input_path(found["storage_path"])
        if file_id not in (None, "") and path in (None, ""):
            raise ValueError("file_id must be a string")
        normalized = batch.input_path(path)
        if self._uploads.file_by_storage_path(user.name, normalized):
            return normalized
        shared = self._uploads.shared_file(user, storage_path=normalized)
        if shared is not None:
            return self._readable_share(user, shared)
        roots = [user.home if r == "~" else r for r in self._data_roots]
        real = os.path.realpath(normalized)
        if not any(_under(normalized, root) and _under(real, root) for root in roots if root):
            raise ValueError(f"{normalized} is neither one of your uploads nor under "
                             f"{', '.join(self._data_roots)}")
        if not readable_by(user, normalized):
            raise ValueError(f"{normalized} does not exist or you may not read it")
        return normalized


    @staticmethod
    def _readable_share(user, shared):
        """The path of another user's file shared with ``user``, read in place by the job:
        checked with the user's own identity, as the job will read it."""
        path = batch.input_path(shared["storage_path"])
        if not readable_by(user, path):
            raise ValueError(f"{shared['filename']} is shared with you by {shared['owner']}, but you "
                             "cannot read it on the cluster's filesystem (its permissions were changed)")
        return path


def _under(path, root):
    root = os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def readable_by(user, path):
    """Whether ``user`` may read ``path``, asked with the user's own identity."""
    argv, kwargs = as_user(user, ["/usr/bin/test", "-r", path]) if os.geteuid() == 0 \
        else (["/usr/bin/test", "-r", path], {})
    try:
        answer = subprocess.run(argv, env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=10,
                                stdin=subprocess.DEVNULL, capture_output=True, **kwargs)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return answer.returncode == 0
