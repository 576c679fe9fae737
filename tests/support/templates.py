"""Job templates for the template tests: a valid template's YAML, files dropped into the
catalog as an administrator would, and one daemon shared by a test module.

``simple(name=..., version=..., category=...)``: a valid template's YAML text.
``drop(shared, relpath, text)``: writes it below the shared tree's templates folder.
``tree`` and ``portal`` (module fixtures): a fresh shared tree with the test users,
and a daemon with default settings on it (no Slurm).
"""

import os

import pytest

from .daemon import Daemon, SharedTree
from .users import ensure_test_users

LIST = "/api/v2/templates"
KOREAN = "결과 분석 템플릿"

SIMPLE = """\
name: {name}
version: "{version}"
category: {category}
tags: [demo]
slurm:
  partition: {{default: compute, choices: [compute, group1]}}
  nodes: {{default: 1, max: 2}}
  cpus: 2
  memory: 1G
  time: "00:05:00"
parameters:
  - {{name: text, type: string, required: true}}
  - {{name: count, type: int, default: 2, min: 1, max: 5}}
script: |
  printf '%s' "$PARAM_TEXT" > text.out
  printf '%s' "$PARAM_COUNT" > count.out
"""


def simple(name="Simple", version="1.0.0", category="general"):
    return SIMPLE.format(name=name, version=version, category=category)


def drop(shared, relpath, text):
    """Write like an admin's `cp` into place: a temporary name, then a rename."""
    path = os.path.join(shared.templates, *relpath.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


@pytest.fixture(scope="module")
def tree():
    ensure_test_users()
    shared = SharedTree()
    yield shared
    shared.cleanup()


@pytest.fixture(scope="module")
def portal(tree):
    daemon = Daemon(tree).start()
    yield daemon
    daemon.stop()
