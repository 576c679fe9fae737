"""Which module may import which: the app is built from the top, and domain
code knows nothing of HTTP. Read from the source (imports as written), so a
lazy import inside a function counts too."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "daemon", "hpcportal")
# The top: the WSGI app, the command line and the server that runs the app.
MAY_IMPORT_APP = {"app", "cli", "server", "__main__"}
DOMAIN_PACKAGES = ("catalog", "uploads", "jobs", "slurm")

pytestmark = pytest.mark.unit


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(["hpcportal", *parts]), path


def _imports(module, path):
    """Absolute names of everything ``module`` imports (``from . import x`` as ``pkg.x``)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            yield origin
            for alias in node.names:
                yield f"{origin}.{alias.name}"


def _top(module):
    """``hpcportal.catalog.images`` -> ``catalog``."""
    return (module.split(".") + [""])[1]


def _importers_of(target, modules):
    return sorted(module for module, path in modules
                  if any(name == target or name.startswith(target + ".")
                         for name in _imports(module, path)))


def test_the_imports_are_read():
    modules = dict(_modules())
    # ``serve`` imports the app inside the function: found all the same.
    assert "hpcportal.cli" in _importers_of("hpcportal.app", modules.items())
    assert "hpcportal.resources.uploads" in _importers_of("falcon", modules.items())
    # Relative forms resolve: ``from .. import errors`` in a package's module.
    assert "hpcportal.errors" in set(_imports("hpcportal.resources.base",
                                              modules["hpcportal.resources.base"]))


def test_only_the_top_imports_the_app():
    modules = list(_modules())
    importers = _importers_of("hpcportal.app", modules)
    assert [m for m in importers if _top(m) not in MAY_IMPORT_APP] == []


def _graph():
    """module -> the modules of the package it imports. A module's own packages
    are left out: Python imports them before the module anyway."""
    modules = dict(_modules())
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def _circles(graph):
    """Groups of modules that import each other in a loop (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_through_others():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles(_graph()) == []


def test_domain_code_does_not_import_falcon():
    modules = [(m, p) for m, p in _modules() if _top(m) in DOMAIN_PACKAGES]
    assert len(modules) > 20
    assert _importers_of("falcon", modules) == []


def test_the_client_needs_only_requests_and_the_standard_library():
    """``hpcportal.client`` runs where the daemon's dependencies are not installed."""
    import sys
    modules = [(m, p) for m, p in _modules() if m == "hpcportal.client" or m.startswith("hpcportal.client.")]
    assert len(modules) >= 5
    outside = set()
    for module, path in modules:
        for name in _imports(module, path):
            top = name.split(".")[0]
            if name.startswith("hpcportal.client") or top in sys.stdlib_module_names or top == "requests":
                continue
            outside.add(f"{module} imports {name}")
    assert sorted(outside) == []
