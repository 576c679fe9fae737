"""The README and the guides in docs/ stay true to the code and to each other."""

import glob
import os
import re

import pytest
from support.guides import DOCS, README, REPO, guide_paths, guides, read

from hpcportal.cli import build_parser
from hpcportal.docs import BEGIN, END, settings_markdown

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit

CONFIGURATION = os.path.join(DOCS, "configuration.md")
RESULTS = os.path.join(REPO, "bench", "RESULTS.md")


def test_configuration_reference_matches_the_settings_registry():
    text = read(CONFIGURATION)
    assert BEGIN in text and END in text, "docs/configuration.md lacks the generated settings table"
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == settings_markdown(), (
        "docs/configuration.md's settings table is stale: regenerate it with `hpcportald settings --markdown`")
    # One table only: a second copy elsewhere would go stale unchecked.
    assert [path for path, text in guides() if BEGIN in text] == [CONFIGURATION]


def test_readme_starts_with_the_two_commands():
    text = read(README)
    head = text[:3000]
    assert "\nscripts/demo\n" in head
    assert "\nscripts/test\n" in head
    assert open(os.path.join(REPO, ".ci", "run")).read().strip().endswith("exec scripts/test")


def test_readme_is_the_entry_point_to_the_guides():
    text = read(README)
    assert len(text.splitlines()) <= 600
    docs = sorted(name for name in os.listdir(DOCS) if name.endswith(".md"))
    assert len(docs) >= 4, docs
    assert [name for name in docs if f"](docs/{name})" not in text] == [], "guides the README does not list"


def _hpcportald_commands(text):
    """The argument lists of every ``hpcportald <command> ...`` in code (blocks and spans),
    up to a comment, a pipe, a closing parenthesis or an optional ``[...]``."""
    spans = [line.split(" #")[0] for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    spans += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for span in spans:
        for match in re.finditer(r"(?:^|[\s$(/])hpcportald((?: +[^\s|#)`\[]+)*)", span):
            if match.group(1).split():
                yield match.group(1).split()


def test_every_hpcportald_command_in_the_guides_parses():
    parser = build_parser()
    commands = [(os.path.relpath(path, REPO), args) for path, text in guides()
                for args in _hpcportald_commands(text)
                if args[0] in parser._subparsers._group_actions[0].choices]
    assert len(commands) >= 10 and ["token", "--user", "alice"] in [args for _, args in commands], commands
    for path, args in commands:
        try:
            parser.parse_args(args)
        except SystemExit:
            raise AssertionError(f"{path}: `hpcportald {' '.join(args)}` is not a valid command") from None


def test_every_curl_example_is_one_the_demo_test_runs():
    """tests/test_demo.py runs the blocks marked ``<!-- example: demo -->`` against the demo."""
    unmarked = []
    for path, text in guides():
        blocks = re.finditer(r"(<!-- example: demo(?: setup)? -->\n)?```[a-z]*\n(.*?)\n```", text, re.S)
        unmarked += [(os.path.relpath(path, REPO), block.group(2)) for block in blocks
                     if "curl " in block.group(2) and not block.group(1)]
    assert not unmarked, f"curl examples the demo test does not run:\n{unmarked}"


def test_the_install_steps_put_hpcportald_on_path():
    text = read(README)
    start = text.index("\n## Install\n")
    section = text[start:text.index("\n## ", start + 1)]
    steps = re.search(r"```\n(.*?)```", section, re.S).group(1)
    venv = re.search(r"python3 -m venv (\S+)", steps).group(1)
    assert re.search(rf"^ln -s {re.escape(venv)}/bin/hpcportald /usr/local/bin/", steps, re.M), steps


def _outside_code_blocks(text):
    """The text without fenced and indented code blocks."""
    text = re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)
    return re.sub(r"(?:^(?: {4}|\t).*\n)+", "", text, flags=re.M)


def _outside_code(text):
    return re.sub(r"`[^`\n]*`", "", _outside_code_blocks(text))


def _anchors(text):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes,
    repeats numbered."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _outside_code_blocks(text).replace("`", ""), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _relative_links(text):
    for target in re.findall(r"!?\[[^\]\n]*\]\(([^)\s]+)\)", _outside_code(text)):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            yield target


@pytest.mark.unit
def test_every_relative_link_points_at_a_file_and_heading_that_exist():
    broken, checked = [], 0
    for path in guide_paths() + [RESULTS]:
        for target in _relative_links(read(path)):
            checked += 1
            name, _, anchor = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), name)) if name else path
            if not os.path.exists(linked):
                broken.append(f"{os.path.relpath(path, REPO)}: {target} (no such file)")
            elif anchor and (not linked.endswith(".md") or anchor not in _anchors(read(linked))):
                broken.append(f"{os.path.relpath(path, REPO)}: {target} (no such heading)")
    assert checked >= 20, checked
    assert broken == []


@pytest.mark.unit
def test_every_path_of_the_repository_the_guides_name_exists():
    """`daemon/...`, `tests/...`, `scripts/...` and the like in code spans; `hpcportal/...`
    is the package under daemon/. Patterns (`tests/test_jobs_*.py`) must match a file."""
    top = r"(?:daemon|tests|scripts|bench|ansible|systemd|examples|docs|\.ci|hpcportal)/"
    missing, named = [], 0
    for path, text in guides():
        for name in re.findall(rf"`({top}[^`\s]*)`", _outside_code_blocks(text)):
            named += 1
            local = os.path.join("daemon", name) if name.startswith("hpcportal/") else name
            if not glob.glob(os.path.join(REPO, local)):
                missing.append(f"{os.path.relpath(path, REPO)}: {name}")
    assert named >= 30, named
    assert missing == []


@pytest.mark.unit
def test_the_anchors_are_github_s():
    text = "# Jobs: submission and monitoring on Slurm\n## `script`: values are data, never code\n" \
           "```\n# not a heading\n```\n## Operations\n## Operations\n## Uploads (`bench/upload.py`)\n"
    assert _anchors(text) == {"jobs-submission-and-monitoring-on-slurm", "script-values-are-data-never-code",
                              "operations", "operations-1", "uploads-benchuploadpy"}


@pytest.mark.unit
def test_guides_scripts_and_code_say_nothing_of_a_particular_development_machine():
    """Such facts go next to the figures they explain, in bench/RESULTS.md."""
    pattern = re.compile(r"firecracker|development (?:vm|machine)|this vm\b", re.I)
    paths = guide_paths() + glob.glob(os.path.join(REPO, "scripts", "*")) \
        + glob.glob(os.path.join(REPO, "bench", "*.py")) \
        + glob.glob(os.path.join(REPO, "daemon", "hpcportal", "**", "*.py"), recursive=True)
    assert len(paths) > 20, paths
    assert [(os.path.relpath(path, REPO), match) for path in paths
            for match in pattern.findall(read(path))] == []
