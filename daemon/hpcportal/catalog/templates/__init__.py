"""Job templates: YAML documents under ``<templates root>/<source>/.../<name>.yaml``.

- ``format``: a file read and checked (``parse_template`` -> ``ParsedTemplate``).
- ``ids``: sources, ids and who may see a template; ``versions``: semver order.
- ``settings``: the ``slurm`` section and a request's overrides of it.
- ``parameters``: parameter values; ``files``: files matched to file slots;
  ``images``: the catalog image a template names.
- ``render``: a request checked against a template, answered with the job it
  describes (a ``slurm.job.JobSpec``) and that job's batch script.

No falcon here: the template catalog and its resource call these functions.
"""

from .format import DEFAULT_CATEGORY, ParsedTemplate, format_path, parse_template, schema
from .ids import (TEMPLATE_SUFFIXES, USERS_SOURCE, is_template_file, local_id_from_filename, owner_of, source_of,
                  template_id, visible_to)
from .images import resolve_image
from .parameters import coerce_parameter, environment_value, file_env_name, parameter_env_name
from .render import BODY_NAME, Rendered, render
from .settings import (OVERRIDE_ALIASES, SLURM_SETTINGS, parse_size, parse_slurm_time, slurm_memory,
                       slurm_setting)
from .versions import parse_semver, semver_key, sort_versions

__all__ = ["BODY_NAME", "DEFAULT_CATEGORY", "OVERRIDE_ALIASES", "ParsedTemplate", "Rendered", "SLURM_SETTINGS",
           "TEMPLATE_SUFFIXES", "USERS_SOURCE", "coerce_parameter", "environment_value", "file_env_name",
           "format_path", "is_template_file", "local_id_from_filename", "owner_of", "parameter_env_name",
           "parse_semver", "parse_size", "parse_slurm_time", "parse_template", "render", "resolve_image", "schema",
           "semver_key", "slurm_memory", "slurm_setting", "sort_versions", "source_of", "template_id",
           "visible_to"]
