"""``hpcportald scan [--images] [--templates]``: one reconciliation, then a report."""

from ..errors import ConfigError


def cmd_scan(args, config):
    from ..app import create_app
    from ..db import upgrade
    from .indexer import indexer_for

    app = create_app(config)
    upgrade(app.portal.database)
    indexer = indexer_for(app.portal)
    wanted = [name for name in ("images", "templates") if getattr(args, name)]
    missing = [name for name in wanted if name not in indexer.kinds]
    if missing:
        raise ConfigError(f"scan: this daemon has no {missing[0]} catalog")
    results = indexer.scan(wanted or None)
    for name, result in results.items():
        root = indexer.kind(name).root
        for action, relpaths in (("added", result.added), ("updated", result.updated),
                                 ("removed", result.removed), ("deferred", result.deferred)):
            for relpath in relpaths:
                marker = " (invalid)" if relpath in result.invalid else ""
                print(f"{name}: {action} {relpath}{marker}")
        counts = result.counts()
        print(f"{name}: {root}: {counts['added']} added, {counts['updated']} updated, "
              f"{counts['removed']} removed, {counts['invalid']} invalid, "
              f"{counts['deferred']} still being written, {counts['unchanged']} unchanged "
              f"in {counts['duration_ms']} ms")
        # Kinds that keep every problem of a file (templates) list what is invalid now.
        invalid_files = getattr(indexer.kind(name), "invalid_files", None)
        for relpath, problems in (invalid_files() if invalid_files else []):
            print(f"{name}: invalid {relpath}:")
            for line in (problems or "").splitlines():
                print(f"    {line}")
    return 0


def register(subparsers):
    scan = subparsers.add_parser(
        "scan", help="reconcile the catalogs with their folders once and print what changed",
        description="Runs one full reconciliation of the image and/or template catalogs "
                    "(both when neither flag is given) against the shared folders.")
    scan.add_argument("--images", action="store_true", help="scan the image folders")
    scan.add_argument("--templates", action="store_true", help="scan the template folders")
    scan.set_defaults(func=cmd_scan)
