"""The OpenAPI 3.1 document, kept as one YAML fragment per area in this folder."""

import importlib.resources

import yaml

from .. import __version__


def document():
    merged = None
    folder = importlib.resources.files(__name__)
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml"))
    # base.yaml carries info, servers and shared components; the rest add paths.
    names.sort(key=lambda n: n != "base.yaml")
    for name in names:
        fragment = yaml.safe_load(folder.joinpath(name).read_text(encoding="utf-8")) or {}
        if merged is None:
            merged = fragment
            merged.setdefault("paths", {})
            merged.setdefault("components", {}).setdefault("schemas", {})
            continue
        for path, item in (fragment.get("paths") or {}).items():
            if path in merged["paths"]:
                raise ValueError(f"openapi/{name}: path {path} is already documented")
            merged["paths"][path] = item
        for kind, entries in (fragment.get("components") or {}).items():
            merged["components"].setdefault(kind, {}).update(entries or {})
    merged["info"]["version"] = __version__
    return merged
