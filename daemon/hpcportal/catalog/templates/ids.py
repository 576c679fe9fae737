"""Who a template belongs to: its source folder, its id and who may see it.

``official/cfd/x.yaml`` lies in source ``official``; ``users/alice/x.yaml`` in
``users/alice``, seen by alice and administrators only. A template's id is its
source's parts and its local id joined by dots (``official.openfoam``).
"""

import os
import posixpath
import re

TEMPLATE_SUFFIXES = (".yaml", ".yml")
USERS_SOURCE = "users"

LOCAL_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SOURCE_PART = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Unix user names as useradd accepts them by default (NAME_REGEX).
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def source_of(relpath):
    """``official/cfd/x.yaml`` -> ``official``; ``users/alice/x.yaml`` -> ``users/alice``.

    Raises ValueError for files outside a valid source folder.
    """
    parts = [p for p in relpath.replace(os.sep, "/").split("/") if p]
    if len(parts) < 2:
        raise ValueError("a template must lie in a source folder such as official/ or community/")
    if parts[0] == USERS_SOURCE:
        if len(parts) < 3:
            raise ValueError("a user's template must lie in users/<user name>/")
        if not _USER_NAME.match(parts[1]):
            raise ValueError(f"users/{parts[1]}: not a valid user name")
        return f"{USERS_SOURCE}/{parts[1]}"
    if not _SOURCE_PART.match(parts[0]):
        raise ValueError(f"{parts[0]}: a source folder name uses a-z, 0-9, _ and - only")
    return parts[0]


def local_id_from_filename(relpath):
    stem = posixpath.basename(relpath.replace(os.sep, "/"))
    for suffix in TEMPLATE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    slug = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")
    return slug[:64] or "template"


def template_id(source, local_id):
    """``official`` + ``openfoam`` -> ``official.openfoam``; ``users/alice`` -> ``users.alice.x``.

    Source parts and local ids never contain dots, so an id names one source
    and one local id; a file cannot claim another source's id.
    """
    return source.replace("/", ".") + "." + local_id


def is_template_file(relpath):
    name = posixpath.basename(relpath.replace(os.sep, "/"))
    return name.endswith(TEMPLATE_SUFFIXES) and not name.startswith(".")


def owner_of(source):
    """The user name a ``users/<name>`` source belongs to, else None."""
    if source.startswith(USERS_SOURCE + "/"):
        return source.split("/", 1)[1]
    return None


def visible_to(source, user):
    """Shared sources for everyone; ``users/<name>`` for that user and admins."""
    owner = owner_of(source)
    if owner is None:
        return True
    return bool(user is not None and (user.admin or user.name == owner))
