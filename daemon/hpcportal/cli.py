"""``hpcportald``: the only place that reads the environment and the command line.

Each subcommand parses, builds and reports; a startup problem becomes one
clear line on stderr and exit status 2, never a traceback.
"""

import argparse
import json
import logging
import sys

import peewee
import yaml

from . import __version__
from .config import SETTINGS, Config, parse_duration
from .errors import ConfigError

log = logging.getLogger("hpcportal")


def _setup_logging(level="info"):
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args, config):
    from .app import create_app
    from .db import upgrade
    from .security import check_key_files
    from .server import Server, limit_malloc_arenas

    limit_malloc_arenas()
    check_key_files(config)
    app = create_app(config)
    applied = upgrade(app.portal.database)
    for number, description in applied:
        log.info("database migrated: %d %s", number, description)
    Server(app, config).run()
    return 0


def cmd_check_config(args, config):
    print(f"# effective configuration (source: {config.source or 'defaults and environment'})")
    # Building the verifier also checks that key files are readable.
    from .auth import TokenVerifier
    from .security import check_key_files
    check_key_files(config)
    TokenVerifier(config)
    print(yaml.safe_dump(config.as_dict(mask_secrets=True), sort_keys=False), end="")
    return 0


def cmd_db_upgrade(args, config):
    from .db import open_database, upgrade
    applied = upgrade(open_database(config))
    if not applied:
        print("database is up to date")
    for number, description in applied:
        print(f"applied migration {number}: {description}")
    return 0


def cmd_token(args, config):
    from .auth import mint_token
    secret = config.jwt_secret()
    if not secret or not any(a.startswith("HS") for a in config.auth.algorithms):
        raise ConfigError("auth.secret: `token` needs an HS* algorithm and a configured secret")
    algorithm = next(a for a in config.auth.algorithms if a.startswith("HS"))
    claims = {}
    if config.auth.issuer:
        claims["iss"] = config.auth.issuer
    if config.auth.audience:
        claims["aud"] = config.auth.audience
    if config.auth.identity_claim != "sub":
        claims[config.auth.identity_claim] = args.user
    token = mint_token(secret, args.user, admin=args.admin, ttl=args.ttl,
                       algorithm=algorithm, **claims)
    print(token)
    return 0


def cmd_scan(args, config):
    """One reconciliation of the catalogs with their folders, then a report."""
    from .db import upgrade
    from .portal import build_portal

    portal = build_portal(config)
    upgrade(portal.database)
    indexer = portal.indexer
    wanted = [name for name in ("images", "templates") if getattr(args, name)]
    results = indexer.scan(wanted or None)
    for name, result in results.items():
        kind = indexer.kind(name)
        for action, relpaths in (("added", result.added), ("updated", result.updated),
                                 ("removed", result.removed), ("deferred", result.deferred)):
            for relpath in relpaths:
                marker = " (invalid)" if relpath in result.invalid else ""
                print(f"{name}: {action} {relpath}{marker}")
        counts = result.counts()
        print(f"{name}: {kind.root}: {counts['added']} added, {counts['updated']} updated, "
              f"{counts['removed']} removed, {counts['invalid']} invalid, "
              f"{counts['deferred']} still being written, {counts['unchanged']} unchanged "
              f"in {counts['duration_ms']} ms")
        # Kinds that keep every problem of a file (templates) list what is invalid now.
        invalid_files = getattr(kind, "invalid_files", None)
        for relpath, problems in (invalid_files() if invalid_files else []):
            print(f"{name}: invalid {relpath}:")
            for line in (problems or "").splitlines():
                print(f"    {line}")
    return 0


def cmd_settings(args, config):
    """The settings registry, for the configuration reference (docs/configuration.md)."""
    if args.markdown:
        from .docs import settings_markdown
        print(settings_markdown())
        return 0
    rows = [{"name": s.name, "env": s.env_name, "default": s.default, "help": s.help} for s in SETTINGS]
    print(json.dumps(rows, indent=2, default=str))
    return 0


def _ttl(value):
    try:
        return int(parse_duration(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser():
    parser = argparse.ArgumentParser(prog="hpcportald", description="hpcportal backend daemon")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default /etc/hpcportal/config.yaml, or $HPCPORTAL_CONFIG)")
    parser.add_argument("--version", action="version", version=f"hpcportald {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the daemon").set_defaults(func=cmd_serve)
    sub.add_parser("check-config", help="validate and print the effective config").set_defaults(
        func=cmd_check_config)
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply pending migrations").set_defaults(func=cmd_db_upgrade)
    token = sub.add_parser("token", help="mint a development token with the configured secret")
    token.add_argument("--user", required=True)
    token.add_argument("--admin", action="store_true")
    token.add_argument("--ttl", type=_ttl, default=3600, help="lifetime, e.g. 1h (default 1h)")
    token.set_defaults(func=cmd_token)
    settings = sub.add_parser("settings", help="list every setting with its default")
    settings.add_argument("--markdown", action="store_true", help="as the table in docs/configuration.md")
    settings.set_defaults(func=cmd_settings)
    scan = sub.add_parser(
        "scan", help="reconcile the catalogs with their folders once and print what changed",
        description="Runs one full reconciliation of the image and/or template catalogs "
                    "(both when neither flag is given) against the shared folders.")
    scan.add_argument("--images", action="store_true", help="scan the image folders")
    scan.add_argument("--templates", action="store_true", help="scan the template folders")
    scan.set_defaults(func=cmd_scan)
    _accept_config_after_command(sub)
    return parser


def _accept_config_after_command(subparsers):
    """``hpcportald serve --config FILE`` as well as ``hpcportald --config FILE serve``.

    SUPPRESS leaves the top-level value alone unless the option is given after
    the command, where it then wins."""
    for command in subparsers.choices.values():
        command.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                             help="config file (also accepted before the command)")
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):  # ``db upgrade``
                _accept_config_after_command(action)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = Config.load(args.config)
        _setup_logging(config.server.log_level)
        return args.func(args, config)
    except ConfigError as exc:
        print(f"hpcportald: configuration error: {exc}", file=sys.stderr)
        return 2
    except peewee.PeeweeException as exc:
        print(f"hpcportald: database error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hpcportald: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
