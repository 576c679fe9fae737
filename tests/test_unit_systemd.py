"""The shipped unit is what the Ansible role renders with its defaults, checked in the fast tier.

The deployment lab (tests/deploy/test_deploy.py) installs the role on real heads
and compares the installed unit with systemd/hpcportald.service; this renders
the role's template here with jinja2 and the role's own variables, so a change
to one of the two files without the other fails in seconds, not in the lab.
Ansible resolves variables lazily and has a few filters of its own: the ones
the unit needs are given below.
"""

import ast
import json
import os
import pathlib
import re

import jinja2
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROLE = ROOT / "ansible" / "roles" / "hpcportal"
UNIT_FILE = ROOT / "systemd" / "hpcportald.service"
RESTD_UNIT_FILE = ROOT / "systemd" / "slurmrestd.service"
# Ansible's default for ``ansible_managed`` (ansible.cfg does not change it).
ANSIBLE_MANAGED = "Ansible managed"


def _regex_replace(value, pattern, replacement=""):
    return re.sub(pattern, replacement, value)


def _combine(*mappings):
    out = {}
    for mapping in mappings:
        out.update(mapping)
    return out


def _as_value(text):
    """Ansible turns a rendered "[...]" / "{...}" / "True" back into that value."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{") or stripped in ("True", "False"):
        try:
            return ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return text
    return text


def environment():
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(regex_replace=_regex_replace, dirname=os.path.dirname, basename=os.path.basename,
                       combine=_combine, from_json=json.loads,
                       bool=lambda value: str(value).lower() in ("1", "true", "yes", "on"))
    env.tests["match"] = lambda value, pattern: re.match(pattern, value) is not None
    return env


def role_variables(env, **overrides):
    """defaults/main.yml, then vars/main.yml, resolved as far as they can be without a host."""
    raw = {}
    for name in ("defaults", "vars"):
        raw.update(yaml.safe_load((ROLE / name / "main.yml").read_text()) or {})
    raw.update(overrides)
    resolved = {"ansible_managed": ANSIBLE_MANAGED}
    pending = dict(raw)
    while pending:
        progress = False
        for key, value in list(pending.items()):
            if not isinstance(value, str) or "{{" not in value:
                resolved[key] = value
            else:
                try:
                    resolved[key] = _as_value(env.from_string(value).render(resolved))
                except jinja2.UndefinedError:
                    continue  # needs a variable not resolved yet (or a host's fact)
            del pending[key]
            progress = True
        if not progress:
            break
    return resolved


def render_unit(name="hpcportald.service", **overrides):
    env = environment()
    template = env.from_string((ROLE / "templates" / f"{name}.j2").read_text())
    return template.render(role_variables(env, **overrides))


def directive(unit, name):
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(name + "=")]


def test_the_shipped_unit_is_the_role_template_rendered_with_its_defaults():
    assert render_unit() == UNIT_FILE.read_text()


def test_the_unit_says_it_is_managed_by_ansible_and_from_which_template():
    assert UNIT_FILE.read_text().splitlines()[0] == (
        "# Ansible managed: ansible/roles/hpcportal/templates/hpcportald.service.j2")


def test_a_port_below_1024_adds_only_the_bind_capability():
    default, low = render_unit(), render_unit(hpcportal_port=443)
    added = [line for line in low.splitlines() if line not in default.splitlines()]
    assert added == ["# listen on a port below 1024", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]


def test_a_sqlite_file_outside_the_state_directory_is_writable_too():
    unit = render_unit(hpcportal_database_url="sqlite:////srv/portal/portal.db")
    assert directive(unit, "ReadWritePaths") == ["/shared/uploads /srv/portal"]


def test_paths_come_from_the_role_variables():
    unit = render_unit(hpcportal_install_dir="/opt/portal", hpcportal_config_dir="/etc/portal",
                       hpcportal_uploads_dir="/data/uploads", hpcportal_images_dir="/data/images",
                       hpcportal_templates_dir="/data/images")
    assert directive(unit, "ExecStart") == ["/opt/portal/venv/bin/hpcportald --config /etc/portal/config.yaml serve"]
    assert directive(unit, "RequiresMountsFor") == ["/data/images /data/uploads"]
    assert directive(unit, "ReadWritePaths") == ["/data/uploads"]


def test_the_shipped_slurmrestd_unit_is_the_role_template_rendered_with_its_defaults():
    assert render_unit("slurmrestd.service") == RESTD_UNIT_FILE.read_text()


def test_slurmrestd_gets_a_private_socket_folder_only_for_a_unix_socket():
    unix = render_unit("slurmrestd.service")
    assert directive(unix, "ExecStart") == [
        "/usr/sbin/slurmrestd -a rest_auth/jwt -s openapi/v0.0.38 unix:/run/slurmrestd/slurmrestd.socket"]
    assert directive(unix, "RuntimeDirectory") == ["slurmrestd"]
    assert directive(unix, "RuntimeDirectoryMode") == ["0700"]
    assert directive(unix, "User") == ["slurmrest"]
    loopback = render_unit("slurmrestd.service", hpcportal_slurmrestd_listen="127.0.0.1:6820")
    assert directive(loopback, "ExecStart")[0].endswith(" 127.0.0.1:6820")
    assert directive(loopback, "RuntimeDirectory") == []
