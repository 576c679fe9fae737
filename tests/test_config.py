import os
import subprocess
import sys

import pytest

from hpcportal.config import SETTINGS, Config, parse_duration, parse_size
from hpcportal.errors import ConfigError

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit


def test_defaults_match_the_documented_key_names():
    config = Config.from_dict({"auth": {"secret": "s"}})
    assert (config.server.host, config.server.port, config.server.threads) == ("127.0.0.1", 5000, 8)
    assert config.paths.images == "/shared/apptainer/images"
    assert config.paths.templates == "/shared/templates"
    assert config.paths.uploads == "/shared/uploads"
    assert config.database.url == "sqlite:////var/lib/hpcportal/portal.db"
    assert config.auth.algorithms == ("HS256",)
    assert config.auth.identity_claim == "sub"
    assert config.auth.leeway == 30
    assert config.users.min_uid == 1000
    assert config.uploads.max_size == 50 * 1024**3
    assert config.uploads.chunk_size == 5 * 1024**2
    assert config.uploads.expire_after == 24 * 3600
    assert config.catalog.watcher == "auto"
    assert dict(config.catalog.image_partitions)["compute"] == ("compute", "group1")
    assert config.slurm.bin_dir == "/usr/bin"


def test_every_setting_has_help_and_a_parseable_default():
    for setting in SETTINGS:
        assert setting.help, setting.name
        setting.parse(setting.default)


def test_environment_overrides_file_values():
    config = Config.from_dict({"server": {"port": 6000}},
                              env={"HPCPORTAL_SERVER_PORT": "5001", "HPCPORTAL_USERS_DENY": "eve,mallory"})
    assert config.server.port == 5001
    assert config.users.deny == ("eve", "mallory")


@pytest.mark.parametrize("data, env, fragment", [
    ({"server": {"port": "abc"}}, {}, "server.port: expected an integer"),
    ({"server": {"port": 70000}}, {}, "server.port: must be between"),
    ({"server": {"portt": 1}}, {}, "server.portt: unknown setting"),
    ({}, {"HPCPORTAL_SERVER_PROT": "1"}, "HPCPORTAL_SERVER_PROT: unknown setting"),
    ({"uploads": {"max_size": "lots"}}, {}, "uploads.max_size: expected a size"),
    ({"catalog": {"watcher": "magic"}}, {}, "catalog.watcher: expected one of auto, inotify, poll"),
    ({"paths": {"images": "relative/path"}}, {}, "paths.images: expected an absolute path"),
    ({"auth": {"algorithms": ["none"]}}, {}, "auth.algorithms: 'none' is not supported"),
    ({"auth": {"algorithms": ["HS256", "RS256"]}}, {}, "auth.algorithms: use either"),
    ({"auth": {"algorithms": ["RS256"]}}, {}, "auth.public_key_file: RS*/ES* algorithms need"),
    ({"auth": {"secret": "a", "secret_file": "/x"}}, {}, "auth.secret: set auth.secret or"),
    ({"users": {"min_uid": 0}}, {}, "users.min_uid"),
    ({"users": {"min_uid": 5000, "max_uid": 4000}}, {}, "users.max_uid: must not be smaller"),
    ({"server": []}, {}, "server: expected a mapping"),
    ({"slurm": {"backend": "sometimes"}}, {}, "slurm.backend: expected one of auto, rest, cli"),
    ({"slurm": {"backend": "rest"}}, {}, "slurm.rest_url: slurm.backend rest needs"),
    ({"slurm": {"rest_url": "127.0.0.1:6820"}}, {}, "slurm.rest_url: expected http://host:port or unix:"),
    ({"slurm": {"rest_url": "unix:relative.sock"}}, {}, "slurm.rest_url: expected"),
])
def test_invalid_values_name_the_setting(data, env, fragment):
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data, env=env)
    assert fragment in str(info.value)


def test_sizes_and_durations():
    assert parse_size("5MiB") == 5 * 1024**2
    assert parse_size("16GB") == 16 * 1000**3
    assert parse_size(123) == 123
    assert parse_duration("24h") == 86400
    assert parse_duration("90s") == 90
    assert parse_duration(30) == 30
    with pytest.raises(ValueError):
        parse_size("-1")


def test_secret_file_is_read_and_masked(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file\n")
    config = Config.from_dict({"auth": {"secret_file": str(secret_file)}})
    assert config.jwt_secret() == "from-the-file"
    shown = Config.from_dict({"auth": {"secret": "visible"}}).as_dict()
    assert shown["auth"]["secret"] == "********"


def _cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hpcportal", *args], capture_output=True,
                          text=True, env=full_env, timeout=60)


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server: {port: 5050}\nauth: {secret: super-secret-value}\n")
    result = _cli("--config", str(path), "check-config", env={"HPCPORTAL_SERVER_THREADS": "3"})
    assert result.returncode == 0, result.stderr
    assert "port: 5050" in result.stdout and "threads: 3" in result.stdout
    assert "super-secret-value" not in result.stdout
    assert "********" in result.stdout


def test_invalid_config_fails_with_one_clear_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server: {port: [1]}\n")
    result = _cli("--config", str(path), "serve")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hpcportald: configuration error: server.port: expected an integer, got [1]"]
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  port: 1\n bad: [\n")
    result = _cli("--config", str(path), "check-config")
    assert result.returncode == 2
    assert "is not valid YAML at line" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_given_explicitly_is_an_error(tmp_path):
    result = _cli("--config", str(tmp_path / "absent.yaml"), "check-config")
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_token_command_needs_a_secret(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("database: {url: 'sqlite:///%s/p.db'}\n" % tmp_path)
    result = _cli("--config", str(path), "token", "--user", "alice")
    assert result.returncode == 2
    assert "needs an HS* algorithm and a configured secret" in result.stderr


def test_token_command_mints_a_verifiable_token(tmp_path):
    import jwt
    path = tmp_path / "config.yaml"
    path.write_text("auth: {secret: s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t}\n")
    result = _cli("--config", str(path), "token", "--user", "alice", "--admin", "--ttl", "2h")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t", algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["roles"] == ["admin"] and claims["type"] == "access"
    assert claims["exp"] - claims["iat"] == 7200


def test_db_upgrade_applies_then_finds_nothing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("database: {url: 'sqlite:///%s/p.db'}\nauth: {secret: x}\n" % tmp_path)
    first = _cli("--config", str(path), "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "applied migration 1" in first.stdout
    second = _cli("--config", str(path), "db", "upgrade")
    assert second.stdout.strip() == "database is up to date"


def test_db_upgrade_adds_the_lease_holder_column_to_a_database_made_before_it(tmp_path):
    import sqlite3
    path = tmp_path / "config.yaml"
    path.write_text("database: {url: 'sqlite:///%s/p.db'}\nauth: {secret: x}\n" % tmp_path)
    assert _cli("--config", str(path), "db", "upgrade").returncode == 0
    with sqlite3.connect(tmp_path / "p.db") as conn:  # as a release before migration 6 left it
        conn.execute("ALTER TABLE upload DROP COLUMN lease_holder")
        conn.execute("DELETE FROM schema_migrations WHERE version = 6")
    again = _cli("--config", str(path), "db", "upgrade")
    assert again.returncode == 0, again.stderr
    assert "applied migration 6" in again.stdout
    with sqlite3.connect(tmp_path / "p.db") as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(upload)")]
    assert "lease_holder" in columns
