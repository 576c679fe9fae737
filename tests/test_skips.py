"""No test is skipped silently.

Every skip states its reason (``scripts/test`` prints them with ``-rs``), and no
test skips because a tool is missing: ``scripts/install-deps`` installs every
tool the tests use, so a missing one is a broken setup and must fail loudly.
The check reads the test sources; it does not hook into pytest.
"""

import ast
import glob
import os

import pytest

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit

TESTS = os.path.dirname(os.path.abspath(__file__))
SKIPS = {"skip", "skipif", "importorskip", "xfail"}


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _skip_kind(node):
    """"skip", "skipif", ... for pytest.skip(...), pytest.mark.skipif(...), ..."""
    target = node.func if isinstance(node, ast.Call) else node
    name = _dotted(target)
    last = name.rsplit(".", 1)[-1]
    return last if name.startswith("pytest.") and last in SKIPS else None


def _has_text(node):
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and bool(node.value.strip())
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.Constant) and str(v.value).strip() for v in node.values)
    return node is not None   # a name or expression computed elsewhere: trust it


def _reason(call, kind):
    for keyword in call.keywords:
        if keyword.arg in ("reason", "msg"):
            return keyword.value
    if kind in ("skip", "xfail") and call.args:
        return call.args[0]
    return None


def _asks_for_a_tool(node):
    return any(isinstance(n, ast.Call) and _dotted(n.func) in ("shutil.which", "which")
               for n in ast.walk(node))


def skip_problems(source, filename="<test>"):
    """Sentences about the skips in ``source`` that break the rules above."""
    tree = ast.parse(source, filename)
    problems = []
    for node in ast.walk(tree):
        kind = _skip_kind(node)
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if kind and not isinstance(node, ast.Call):
            if not any(isinstance(p, ast.Call) and p.func is node for p in ast.walk(tree)):
                problems.append(f"{where}: pytest.mark.{kind} without a reason")
            continue
        if kind == "importorskip":
            problems.append(f"{where}: importorskip: declare the package in setup.cfg instead")
        elif kind and kind != "importorskip" and not _has_text(_reason(node, kind)):
            problems.append(f"{where}: pytest.{kind} without a reason")
        if kind == "skipif" and node.args and _asks_for_a_tool(node.args[0]):
            problems.append(f"{where}: skipped when a tool is missing; install it in "
                            "scripts/install-deps and let the test fail without it")
        if isinstance(node, ast.If) and _asks_for_a_tool(node.test) and any(
                _skip_kind(n) in ("skip", "xfail") for s in node.body for n in ast.walk(s)):
            problems.append(f"{where}: skipped when a tool is missing; install it in "
                            "scripts/install-deps and let the test fail without it")
    return problems


def test_every_skip_in_the_suite_states_its_reason_and_none_waits_for_a_tool():
    problems = []
    for path in sorted(glob.glob(os.path.join(TESTS, "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8") as handle:
            problems += skip_problems(handle.read(), os.path.relpath(path, TESTS))
    assert problems == []


@pytest.mark.parametrize("source", [
    # What the suite did before: skipped when node/npm or siftool were missing.
    "import shutil, pytest\n"
    "def f():\n    if not shutil.which('node'):\n        pytest.skip('node and npm are needed')\n",
    "import shutil, pytest\n"
    "@pytest.mark.skipif(not shutil.which('siftool'), reason='siftool is not installed')\n"
    "def test_x():\n    pass\n",
    "import pytest\n@pytest.mark.skip\ndef test_x():\n    pass\n",
    "import pytest\n@pytest.mark.skipif(True, reason='')\ndef test_x():\n    pass\n",
    "import pytest\ndef test_x():\n    pytest.skip()\n",
    "import pytest\nyaml = pytest.importorskip('yaml')\n",
])
def test_the_check_finds_silent_and_tool_skips(source):
    assert skip_problems(source)


def test_the_check_accepts_a_stated_environmental_reason():
    assert skip_problems(
        "import pytest\ndef test_x(root):\n"
        "    if not root:\n        pytest.skip(f'{root}: the lab needs root')\n") == []
