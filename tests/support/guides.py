"""The project's guides: README.md, then docs/*.md by name.

Their examples run in that order (tests/test_demo.py), so a guide may use what
an earlier one set up; the README's demo block comes first."""

import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")


def guide_paths():
    return [README] + sorted(glob.glob(os.path.join(DOCS, "*.md")))


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def guides():
    """(path, text) of every guide, in order."""
    return [(path, read(path)) for path in guide_paths()]


def all_text():
    return "\n".join(text for _, text in guides())
