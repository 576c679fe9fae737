"""Configuration: one registry of settings, one immutable config object.

Every setting is declared once in ``SETTINGS`` with its type, default and help
text. A config is built from (in increasing priority) the defaults, a YAML file
and ``HPCPORTAL_<SECTION>_<KEY>`` environment variables. Values are parsed and
checked when the config is built, so an invalid value fails at start-up with a
``ConfigError`` naming the setting.
"""

import json
import os
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

import yaml

from .errors import ConfigError
from .ratelimit import parse_rate_limits

DEFAULT_CONFIG_PATH = "/etc/hpcportal/config.yaml"
ENV_PREFIX = "HPCPORTAL_"

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(value):
    """``50GiB`` -> bytes. Integers are bytes. Decimal and binary units."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 5MiB or 50GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 5MiB or 50GiB, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value):
    """``24h`` / ``90s`` / ``7d`` / a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 24h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value).lower())
    if not match:
        raise ValueError(f"expected a duration such as 30s, 10m or 24h, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _optional(parse):
    def parse_optional(value):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
            return None
        return parse(value)
    parse_optional.__name__ = f"optional {parse.__name__}"
    return parse_optional


def parse_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_int(value):
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def parse_float(value):
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def parse_str(value):
    if isinstance(value, (dict, list)):
        raise ValueError("expected a string")
    return str(value)


def parse_path(value):
    text = parse_str(value)
    if not os.path.isabs(text):
        raise ValueError(f"expected an absolute path, got {text!r}")
    return os.path.normpath(text)


def parse_str_list(value):
    """A YAML list, or (from the environment) JSON or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list")
    return tuple(parse_str(item) for item in value)


def parse_mapping_of_lists(value):
    """``{compute: [compute, group1]}``; from the environment as JSON."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of names to lists")
    return MappingProxyType({str(k): parse_str_list(v) for k, v in value.items()})


def one_of(*choices):
    def parse_choice(value):
        text = parse_str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text
    parse_choice.__name__ = "one of " + "|".join(choices)
    return parse_choice


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def name(self):
        return f"{self.section}.{self.key}"

    @property
    def env_name(self):
        return f"{ENV_PREFIX}{self.section}_{self.key}".upper()


S = Setting
SETTINGS = (
    # server
    S("server", "host", parse_str, "127.0.0.1", "Address to listen on."),
    S("server", "port", parse_int, 5000, "TCP port to listen on."),
    S("server", "threads", parse_int, 8, "Worker threads serving requests."),
    S("server", "max_json_body", parse_size, "1MiB", "Largest JSON request body accepted."),
    S("server", "trusted_proxies", parse_str_list, [],
      "Addresses of reverse proxies whose X-Forwarded-For is believed for audit records."),
    S("server", "log_level", one_of("debug", "info", "warning", "error"), "info", "Log level."),
    # security (hpcportal.security, hpcportal.ratelimit)
    S("security", "cors_origins", parse_str_list, [],
      "Origins (scheme://host[:port]) whose pages may call the API from a browser, e.g. the "
      "dashboard's when served from another origin; empty turns CORS off; * allows any."),
    S("security", "cors_max_age", parse_duration, "10m", "How long browsers may cache a CORS preflight."),
    S("security", "rate_limits", parse_rate_limits, {"submit": 120, "upload_init": 300, "scan": 30},
      "Calls per minute one user may make, by action (submit, upload_init, scan), counted per "
      "head; bursts up to the limit pass at once; 0 disables a limit; unlisted actions keep "
      "their default."),
    S("security", "admins_see_all_jobs", parse_bool, True,
      "Administrators may list every user's jobs and read any job's details, scripts, "
      "parameters, output and result files; false limits them to their own jobs like users."),
    # paths
    S("paths", "images", parse_path, "/shared/apptainer/images",
      "Root of the image folders; each sub-folder is an image type."),
    S("paths", "templates", parse_path, "/shared/templates",
      "Root of the template folders; each sub-folder is a template source."),
    S("paths", "uploads", parse_path, "/shared/uploads",
      "Root of uploaded files and job folders, on the shared filesystem."),
    # database
    S("database", "url", parse_str, "sqlite:////var/lib/hpcportal/portal.db",
      "Database URL: sqlite:////path (one head), or a server shared by several heads: "
      "mysql://user:password@host:3306/name (MariaDB/MySQL, needs hpcportal[mysql]) or "
      "postgresql://user:password@host:5432/name (needs hpcportal[postgres])."),
    S("database", "busy_timeout", parse_duration, "10s",
      "How long to wait for a locked database before failing a request with 503."),
    S("database", "max_connections", parse_int, 32,
      "Server databases: connections this daemon keeps at most (request threads plus "
      "background services)."),
    S("database", "stale_timeout", parse_duration, "5m",
      "Server databases: pooled connections older than this are replaced (keep it below "
      "the server's wait_timeout)."),
    S("database", "pool_timeout", parse_duration, "10s",
      "Server databases: how long a request waits for a free connection before a 503."),
    S("database", "connect_timeout", parse_duration, "5s",
      "Server databases: how long to wait for the database server to accept a connection."),
    # auth
    S("auth", "algorithms", parse_str_list, ["HS256"],
      "Accepted JWT algorithms (HS256/384/512, RS256/384/512, ES256/384/512)."),
    S("auth", "secret", _optional(parse_str), None,
      "Shared HMAC secret (the Auth Portal's JWT_SECRET_KEY). Prefer secret_file.", secret=True),
    S("auth", "secret_file", _optional(parse_path), None,
      "File holding the shared HMAC secret."),
    S("auth", "public_key_file", _optional(parse_path), None,
      "PEM public key for RS*/ES* tokens."),
    S("auth", "jwks_file", _optional(parse_path), None, "JWKS file with public keys for RS*/ES* tokens."),
    S("auth", "issuer", _optional(parse_str), None, "Required `iss` claim, when set."),
    S("auth", "audience", _optional(parse_str), None, "Required `aud` claim, when set."),
    S("auth", "identity_claim", parse_str, "sub", "Claim holding the unix user name."),
    S("auth", "admin_claim", parse_str, "roles", "Claim holding the user's roles."),
    S("auth", "admin_value", parse_str, "admin", "Role value that makes a user an administrator."),
    S("auth", "leeway", parse_duration, 30, "Clock skew allowed for exp/nbf/iat, in seconds."),
    S("auth", "invalid_token_status", parse_int, 422,
      "Status for invalid (not missing, not expired) tokens: 422 like flask_jwt_extended, or 401."),
    # users
    S("users", "min_uid", parse_int, 1000, "Smallest uid allowed to use the portal."),
    S("users", "max_uid", parse_int, 60000,
      "Largest uid allowed to use the portal (keeps out nobody, 65534, and other ranges)."),
    S("users", "deny", parse_str_list, [], "User names never allowed."),
    # uploads
    S("uploads", "max_size", parse_size, "50GiB", "Largest file that can be uploaded."),
    S("uploads", "chunk_size", parse_size, "5MiB", "Default chunk size."),
    S("uploads", "min_chunk_size", parse_size, "1MiB", "Smallest chunk size a client may choose."),
    S("uploads", "max_chunk_size", parse_size, "64MiB",
      "Largest chunk (and tus PATCH body) a client may send."),
    S("uploads", "expire_after", parse_duration, "24h",
      "Unfinished uploads without activity for this long are removed."),
    S("uploads", "user_quota", _optional(parse_size), None,
      "Bytes a user may store (finished and reserved); null for unlimited."),
    S("uploads", "max_active_per_user", parse_int, 20, "Unfinished uploads a user may have at once."),
    S("uploads", "free_space_reserve", parse_size, "1GiB",
      "Free space always left on the uploads filesystem."),
    S("uploads", "retention_days", _optional(parse_float), None,
      "Completed files older than this many days are removed; null keeps them."),
    S("uploads", "cleanup_interval", parse_duration, "5m",
      "How often expired uploads and files past retention are looked for."),
    # catalog
    S("catalog", "watcher", one_of("auto", "inotify", "poll"), "auto",
      "How to watch shared folders: auto picks polling on network filesystems."),
    S("catalog", "settle_seconds", parse_float, 2, "A file is indexed once unchanged this long."),
    S("catalog", "poll_interval", parse_float, 5, "Polling watcher interval, in seconds."),
    S("catalog", "rescan_interval", parse_duration, 600, "Full reconciliation interval, in seconds."),
    S("catalog", "image_partitions", parse_mapping_of_lists,
      {"compute": ["compute", "group1"], "viz": ["viz"]},
      "Image type -> Slurm partitions its images are meant for."),
    # slurm
    S("slurm", "bin_dir", parse_path, "/usr/bin", "Folder of sbatch, squeue, scancel, ..."),
    S("slurm", "conf", _optional(parse_path), None,
      "slurm.conf to use (passed as SLURM_CONF); null for Slurm's default."),
    S("slurm", "backend", one_of("auto", "rest", "cli"), "auto",
      "How the daemon talks to Slurm: rest (slurmrestd), cli (sbatch, squeue, ... run as the user) "
      "or auto (slurmrestd when rest_url is set, the key file exists and slurmrestd answers; "
      "else the commands; re-checked every poll_interval)."),
    S("slurm", "rest_url", _optional(parse_str), None,
      "slurmrestd's address: http://127.0.0.1:6820 or unix:/run/slurmrestd/slurmrestd.socket; "
      "null: no REST backend."),
    S("slurm", "jwt_key_file", parse_path, "/etc/slurm/jwt_hs256.key",
      "Slurm's HS256 JWT key (AuthAltParameters=jwt_key=...), read to sign the daemon's Slurm "
      "tokens; it can act as any Slurm user, so it must be root's and mode 0600."),
    S("slurm", "apptainer", parse_str, "apptainer", "The apptainer command run inside jobs."),
    S("slurm", "apptainer_binds", parse_str_list, [],
      "Extra folders bound into every container job (the job folder and the input "
      "files' folders are always bound)."),
    S("slurm", "data_roots", parse_str_list, ["/shared", "~"],
      "Folders whose files a user may pass to a job by path (checked with the user's own "
      "permissions); ~ is the user's home. Completed uploads are always allowed."),
    S("slurm", "command_timeout", parse_duration, "60s",
      "How long a Slurm command may take; longer than Slurm's own retries (about 10 s) "
      "so that a slow controller still answers."),
    S("slurm", "squeue_interval", parse_duration, "3s",
      "Job states come from one squeue call for all users at most this often."),
    S("slurm", "partition_cache", parse_duration, "30s", "How long the partition list is cached."),
    S("slurm", "poll_interval", parse_duration, "10s",
      "How often the job monitor records job states and looks for lost submissions."),
    S("slurm", "max_script_size", parse_size, "1MiB", "Largest job script accepted."),
    S("slurm", "max_output_slice", parse_size, "1MiB", "Most output bytes one output request returns."),
    S("slurm", "max_streams", parse_int, 4,
      "Live output streams open at once (each holds a worker thread, so at most "
      "server.threads - 1 are allowed); more get 429."),
    S("slurm", "max_streams_per_user", parse_int, 2,
      "Live output streams one user may have open at once on this head; more get 429 "
      "while other users keep theirs."),
    S("slurm", "stream_max_duration", parse_duration, "30m",
      "A live output stream ends after this long; the client resumes with Last-Event-ID."),
    S("slurm", "stream_heartbeat", parse_duration, "15s", "Heartbeat interval of live output streams."),
    # jobs (hpcportal.jobs: what the job answers carry beyond Slurm's own fields)
    S("jobs", "max_array_size", parse_int, 1000,
      "Most tasks one job array may have (--array=0-99 has 100), whether asked in the request, "
      "the script's #SBATCH lines or a template."),
    S("jobs", "cluster_jobs", parse_bool, True,
      "The job list, details, output and cancel cover every job of the user Slurm knows, also "
      "those submitted without the portal (sbatch on a login node; source: cluster); false shows "
      "only the portal's own jobs."),
    S("jobs", "usage_interval", parse_duration, "30s",
      "How often running jobs' CPU and memory are sampled (sstat, by the one head holding the "
      "sampling lease); 1s to 1h."),
    S("jobs", "usage_max_jobs", parse_int, 500,
      "Running jobs sampled at most per pass (the oldest first); the rest are not sampled."),
    S("jobs", "usage_retention", parse_duration, "30d", "How long usage samples are kept."),
    # notifications (hpcportal.notifications)
    S("notifications", "retention", parse_duration, "30d", "Notifications older than this are removed."),
    S("notifications", "pending_warning", parse_duration, "30m",
      "A job pending this long for lack of resources or a limit gets a job.waiting notification."),
    S("notifications", "smtp_host", parse_str, "", "The cluster's mail server; empty turns e-mail off."),
    S("notifications", "smtp_port", parse_int, 25, "The mail server's port."),
    S("notifications", "smtp_starttls", parse_bool, False, "Use STARTTLS with the mail server."),
    S("notifications", "smtp_username", _optional(parse_str), None,
      "User name for the mail server; null sends without logging in."),
    S("notifications", "smtp_password_file", _optional(parse_path), None,
      "File holding the mail server password."),
    S("notifications", "from", parse_str, "hpcportal@localhost", "Sender address of notification e-mails."),
    S("notifications", "webhook_prefixes", parse_str_list, [],
      "URL prefixes users' webhooks must start with (e.g. https://chat.example.org/hooks/); "
      "empty turns webhooks off."),
    S("notifications", "max_tries", parse_int, 8,
      "Attempts at one e-mail or webhook call before it is given up (and shown as failed)."),
    S("notifications", "retry_backoff", parse_duration, "30s",
      "Wait before the second attempt; each further one waits twice as long (at most 1 h)."),
    S("notifications", "claim_timeout", parse_duration, "60s",
      "How long a head may take over one delivery before another head may try it (a head "
      "that died mid-delivery is replaced after this)."),
    S("notifications", "max_streams", parse_int, 2000,
      "Event streams (GET /api/v2/events) open at once on this head; more get 429."),
    S("notifications", "max_streams_per_user", parse_int, 20,
      "Event streams one user may have open at once on this head; more get 429."),
    S("notifications", "stream_heartbeat", parse_duration, "15s", "Heartbeat interval of event streams."),
)
del S


def settings_by_name():
    return {s.name: s for s in SETTINGS}


class Section:
    """Read-only attribute access to one section's values."""

    def __init__(self, name, values):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no setting {self._name}.{key}") from None

    def __setattr__(self, key, value):
        raise AttributeError("configuration is read-only")

    def as_dict(self):
        return dict(self._values)


class Config:
    """The effective configuration. Build with ``Config.load`` or ``Config.from_dict``."""

    def __init__(self, values, source=None):
        sections = {}
        for setting in SETTINGS:
            sections.setdefault(setting.section, {})[setting.key] = values[setting.name]
        self._sections = {name: Section(name, vals) for name, vals in sections.items()}
        self.source = source

    def __getattr__(self, name):
        sections = self.__dict__.get("_sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"no config section {name!r}")

    def get(self, name):
        section, key = name.split(".", 1)
        return getattr(self._sections[section], key)

    @classmethod
    def from_dict(cls, data=None, env=None, source=None):
        """Defaults, overlaid by ``data`` (nested sections), then by ``env``."""
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError("the configuration must be a mapping of sections")
        known = settings_by_name()
        raw = {name: s.default for name, s in known.items()}
        for section, entries in data.items():
            if entries is None:
                continue
            if not isinstance(entries, dict):
                raise ConfigError(f"{section}: expected a mapping of settings")
            for key, value in entries.items():
                name = f"{section}.{key}"
                if name not in known:
                    raise ConfigError(f"{name}: unknown setting")
                raw[name] = value
        for name, setting in known.items():
            if env and setting.env_name in env:
                raw[name] = env[setting.env_name]
        unknown_env = [k for k in (env or {}) if k.startswith(ENV_PREFIX)
                       and k not in {s.env_name for s in SETTINGS}]
        if unknown_env:
            raise ConfigError(f"{unknown_env[0]}: unknown setting in the environment")
        values = {}
        for name, setting in known.items():
            try:
                values[name] = setting.parse(raw[name])
            except (ValueError, TypeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{name}: {exc}") from None
        _check(values)
        return cls(values, source=source)

    @classmethod
    def load(cls, path=None, env=None):
        """Read ``path`` (default /etc/hpcportal/config.yaml when it exists)."""
        env = os.environ if env is None else env
        explicit = path is not None
        path = path or env.get("HPCPORTAL_CONFIG") or DEFAULT_CONFIG_PATH
        data = {}
        if explicit or os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    data = yaml.safe_load(handle) or {}
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        else:
            path = None
        env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and k != "HPCPORTAL_CONFIG"}
        return cls.from_dict(data, env=env, source=path)

    def as_dict(self, mask_secrets=True):
        out = {}
        for setting in SETTINGS:
            value = self.get(setting.name)
            if mask_secrets and setting.secret and value is not None:
                value = "********"
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, MappingProxyType):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            out.setdefault(setting.section, {})[setting.key] = value
        return out

    def jwt_secret(self):
        """The HMAC secret, read from ``auth.secret_file`` when set."""
        if self.auth.secret_file:
            try:
                with open(self.auth.secret_file, encoding="utf-8") as handle:
                    secret = handle.read().strip()
            except OSError as exc:
                raise ConfigError(
                    f"auth.secret_file: cannot read {self.auth.secret_file}: {exc.strerror}") from None
            if not secret:
                raise ConfigError(f"auth.secret_file: {self.auth.secret_file} is empty")
            return secret
        return self.auth.secret


def _check(values):
    """Checks that span several settings or ranges of one."""
    def fail(name, message):
        raise ConfigError(f"{name}: {message}")

    if not 0 < values["server.port"] < 65536:
        fail("server.port", "must be between 1 and 65535")
    if values["server.threads"] < 1:
        fail("server.threads", "must be at least 1")
    if values["users.min_uid"] < 1:
        fail("users.min_uid", "must be at least 1 (root is never allowed)")
    if values["users.max_uid"] < values["users.min_uid"]:
        fail("users.max_uid", "must not be smaller than users.min_uid")
    if values["auth.invalid_token_status"] not in (401, 422):
        fail("auth.invalid_token_status", "must be 401 or 422")
    algorithms = values["auth.algorithms"]
    allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
    if not algorithms:
        fail("auth.algorithms", "at least one algorithm is required")
    for alg in algorithms:
        if alg not in allowed:
            fail("auth.algorithms", f"{alg!r} is not supported (use {', '.join(sorted(allowed))})")
    hmac = any(a.startswith("HS") for a in algorithms)
    asym = any(not a.startswith("HS") for a in algorithms)
    if hmac and asym:
        # One key type per deployment: mixing both invites algorithm confusion.
        fail("auth.algorithms", "use either HS* or RS*/ES* algorithms, not both")
    if values["auth.secret"] and values["auth.secret_file"]:
        fail("auth.secret", "set auth.secret or auth.secret_file, not both")
    if asym and not (values["auth.public_key_file"] or values["auth.jwks_file"]):
        fail("auth.public_key_file", "RS*/ES* algorithms need auth.public_key_file or auth.jwks_file")
    if not values["database.url"].split(":", 1)[0]:
        fail("database.url", "expected a URL such as sqlite:////var/lib/hpcportal/portal.db")
    if values["database.max_connections"] < 2:
        fail("database.max_connections", "must be at least 2")
    if values["database.connect_timeout"] <= 0:
        fail("database.connect_timeout", "must be positive")
    if values["uploads.min_chunk_size"] < 1:
        fail("uploads.min_chunk_size", "must be at least 1 byte")
    if values["uploads.max_chunk_size"] < values["uploads.min_chunk_size"]:
        fail("uploads.max_chunk_size", "must not be smaller than uploads.min_chunk_size")
    if not values["uploads.min_chunk_size"] <= values["uploads.chunk_size"] <= values["uploads.max_chunk_size"]:
        fail("uploads.chunk_size", "must lie between uploads.min_chunk_size and uploads.max_chunk_size")
    if values["catalog.settle_seconds"] < 0:
        fail("catalog.settle_seconds", "must not be negative")
    if values["catalog.poll_interval"] <= 0:
        fail("catalog.poll_interval", "must be positive")
    if values["slurm.backend"] == "rest" and not values["slurm.rest_url"]:
        fail("slurm.rest_url", "slurm.backend rest needs slurmrestd's address")
    if values["slurm.rest_url"] and not re.fullmatch(r"https?://[^/\s]+/?|unix:/\S+", values["slurm.rest_url"]):
        fail("slurm.rest_url", "expected http://host:port or unix:/path/to/slurmrestd.socket")
    if values["slurm.command_timeout"] <= 0:
        fail("slurm.command_timeout", "must be positive")
    if not 1 <= values["jobs.usage_interval"] <= 3600:
        fail("jobs.usage_interval", "must be between 1s and 1h")
    if values["jobs.usage_max_jobs"] < 0:
        fail("jobs.usage_max_jobs", "must not be negative")
    if values["jobs.max_array_size"] < 1:
        fail("jobs.max_array_size", "must be at least 1")
    if values["slurm.max_streams"] < 0:
        fail("slurm.max_streams", "must not be negative")
    if values["slurm.max_streams_per_user"] < 0:
        fail("slurm.max_streams_per_user", "must not be negative")
