"""The template format: schema, parsing, problems by path and line, ids, versions, visibility."""

import glob
import json
import os

import jsonschema
import pytest

from hpcportal.auth import User
from hpcportal.catalog import templates as t

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "templates")
EXAMPLE_FILES = sorted(glob.glob(os.path.join(EXAMPLES, "**", "*.yaml"), recursive=True))

MINIMAL = 'name: Minimal\nversion: "1.0.0"\nscript: echo hello\n'


def parse(text, relpath="official/x.yaml"):
    return t.parse_template(text, relpath)


def paths(parsed):
    return [p["path"] for p in parsed.errors]


def test_the_schema_is_a_valid_json_schema_shipped_in_the_package():
    schema = t.schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert set(schema["required"]) == {"name", "version", "script"}


def test_there_are_at_least_six_official_examples():
    names = {os.path.basename(f) for f in EXAMPLE_FILES if "/official/" in f}
    assert len(names) >= 6
    for expected in ("openfoam", "lammps", "gromacs", "python", "pytorch", "paraview"):
        assert any(expected in n for n in names), expected


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=os.path.basename)
def test_every_example_is_valid_without_warnings(path):
    with open(path, encoding="utf-8") as handle:
        parsed = parse(handle.read(), os.path.relpath(path, EXAMPLES))
    assert parsed.errors == []
    assert parsed.warnings == []
    assert parsed.valid
    assert parsed.id.startswith("official.")
    t.parse_semver(parsed.version)


def test_minimal_template_gets_documented_defaults():
    parsed = parse(MINIMAL, "community/tools/Hello World.yml")
    assert parsed.valid
    assert parsed.id == "community.hello-world"
    assert parsed.source == "community"
    assert parsed.document.get("category") is None  # the default is applied when serialised
    assert t.DEFAULT_CATEGORY == "general"


def test_ids_derive_from_source_and_file_name_or_the_id_key():
    assert parse(MINIMAL, "official/cfd/openfoam.yaml").id == "official.openfoam"
    assert parse(MINIMAL, "users/alice/mine.yaml").id == "users.alice.mine"
    assert parse("id: shared-name\n" + MINIMAL, "official/a/v1.yaml").id == "official.shared-name"
    # A dot would let one source claim another's id.
    claimed = parse("id: official.x\n" + MINIMAL, "users/bob/x.yaml")
    assert "id" in paths(claimed)
    assert claimed.id == "users.bob.x"


@pytest.mark.parametrize("relpath, reason", [
    ("loose.yaml", "source folder"),
    ("users/alice.yaml", "users/<user name>"),
    ("users/Not A User/x.yaml", "not a valid user name"),
])
def test_files_outside_a_source_are_invalid(relpath, reason):
    parsed = parse(MINIMAL, relpath)
    assert not parsed.valid
    assert reason in parsed.errors[0]["message"]


def test_invalid_yaml_reports_line_and_column():
    parsed = parse('name: x\nversion: "1.0.0"\nscript: |\n  echo\n tags: [a, b\n')
    assert not parsed.valid
    (problem,) = parsed.errors
    assert problem["line"] == 5
    assert problem["column"] >= 1
    assert "line 5, column" in problem["message"]


def test_duplicate_yaml_keys_are_reported_with_both_lines():
    parsed = parse('name: x\nversion: "1.0.0"\nname: y\nscript: echo\n')
    (problem,) = parsed.errors
    assert problem["line"] == 3
    assert "duplicate key 'name'" in problem["message"] and "line 1" in problem["message"]


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_a_document_that_is_not_a_mapping_is_invalid(text):
    parsed = parse(text)
    assert not parsed.valid and "YAML mapping" in parsed.errors[0]["message"]


def test_schema_violations_are_listed_with_paths_and_lines():
    text = """\
name: Broken
version: 1.0
tags: [ok, "not ok"]
slurm:
  nodes: {defualt: 2}
  memory: lots
  time: "99:99:99:99"
apptainer:
  image: python
  options: [--bind]
files:
  - name: mesh
  - name: case
    patterns: ["*.tar.gz"]
  - name: extra
    patterns: "*.txt"
parameters:
  - name: solver
    type: text
  - label: no name
    type: int
script: echo
colour: blue
"""
    parsed = parse(text)
    found = {p["path"]: p for p in parsed.errors}
    assert set(found) >= {"version", "tags[1]", "slurm.nodes.defualt", "slurm.memory", "slurm.time",
                          "apptainer.options[0]", "files[2].patterns", "parameters[0].type",
                          "parameters[1].name", "colour"}
    assert found["files[2].patterns"]["line"] == 16
    assert found["colour"]["line"] == 23
    assert "quote it" in found["version"]["message"]
    assert "unknown key 'defualt'" in found["slurm.nodes.defualt"]["message"]
    assert "size" in found["slurm.memory"]["message"].lower()
    # Sorted by line, so admins read them top to bottom.
    lines = [p.get("line") or 0 for p in parsed.errors]
    assert lines == sorted(lines)


def test_required_keys_are_named():
    parsed = parse("name: only a name\n")
    assert set(paths(parsed)) == {"version", "script"}


def test_choice_parameters_need_choices():
    parsed = parse(MINIMAL + "parameters:\n  - {name: mode, type: choice}\n")
    assert "parameters[0].choices" in paths(parsed)


def test_cross_checks_duplicates_defaults_bounds_and_sbatch_lines():
    text = MINIMAL.replace("script: echo hello\n", "") + """\
parameters:
  - {name: steps, type: int, default: 500, min: 1, max: 100}
  - {name: Steps, type: int}
  - {name: flag, type: bool, min: 1}
  - {name: mode, type: choice, choices: [a, b], default: c}
  - {name: word, type: string, pattern: "[a-z"}
files:
  - {name: mesh}
  - {name: MESH}
slurm:
  nodes: {default: 8, min: 1, max: 4}
  memory: {min: 64G, max: 1G}
  cpus: {fixed: true}
script: |
  echo start
  #SBATCH --uid=0
"""
    parsed = parse(text)
    found = {p["path"]: p["message"] for p in parsed.errors}
    assert "duplicate name 'Steps'" in found["parameters[1].name"]
    assert "PARAM_STEPS" in found["parameters[1].name"]
    assert "duplicate name 'MESH'" in found["files[1].name"]
    assert "at most 100" in found["parameters[0].default"]
    assert "min/max do not apply" in found["parameters[2]"]
    assert "one of a, b" in found["parameters[3].default"]
    assert "regular expression" in found["parameters[4].pattern"]
    assert "above the maximum" in found["slurm.nodes.default"]
    assert "min is larger than max" in found["slurm.memory"]
    assert "needs a default" in found["slurm.cpus"]
    assert "#SBATCH" in found["script"] and "line 2" in found["script"]


def test_undeclared_variables_are_warnings_not_errors():
    text = MINIMAL.replace("script: echo hello\n", "") + """\
parameters:
  - {name: known, type: string}
script: |
  echo "$PARAM_KNOWN ${PARAM_MISSING} $FILE_INPUT ${HOME}"
"""
    parsed = parse(text)
    assert parsed.valid
    messages = [w["message"] for w in parsed.warnings]
    assert len(messages) == 2
    assert any("$FILE_INPUT" in m and "file named input" in m for m in messages)
    assert any("$PARAM_MISSING" in m for m in messages)


def test_problems_are_json_serialisable():
    parsed = parse("name: [\n")
    json.dumps(parsed.errors)


def test_semver_ordering_follows_precedence():
    versions = ["1.0.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta.11", "1.0.0-beta.2",
                "1.0.0-rc.1", "0.9.9", "1.10.0", "1.2.0", "1.0.0-alpha.beta", "1.0.0-beta"]
    assert t.sort_versions(versions) == [
        "0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
        "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0"]
    with pytest.raises(ValueError):
        t.parse_semver("1.0")


def test_visibility_of_sources():
    alice = User(name="alice", uid=2001, gid=2001, groups=(), admin=False)
    bob = User(name="bob", uid=2002, gid=2002, groups=(), admin=False)
    admin = User(name="root-ish", uid=2003, gid=2003, groups=(), admin=True)
    assert t.visible_to("official", bob) and t.visible_to("community", bob)
    assert t.visible_to("users/alice", alice)
    assert not t.visible_to("users/alice", bob)
    assert t.visible_to("users/alice", admin)


@pytest.mark.parametrize("value, expected", [
    ("16GB", 16 * 1024**3), ("16G", 16 * 1024**3), ("512M", 512 * 1024**2), ("1.5GiB", int(1.5 * 1024**3)),
    (1000, 1000), ("2T", 2 * 1024**4),
])
def test_sizes(value, expected):
    assert t.parse_size(value) == expected


@pytest.mark.parametrize("value, seconds", [
    (90, 5400), ("90", 5400), ("10:30", 630), ("02:00:00", 7200), ("1-12", 129600),
    ("1-12:30", 131400), ("2-00:00:00", 172800),
])
def test_slurm_times(value, seconds):
    assert t.parse_slurm_time(value) == seconds


def test_image_resolution_prefers_exact_id_then_newest_match():
    images = [
        {"id": "openfoam-v2212", "name": "openfoam-v2212.sif", "version": "v2212", "path": "/i/a"},
        {"id": "openfoam-v2312", "name": "openfoam-v2312.sif", "version": "v2312", "path": "/i/b"},
        {"id": "openfoam-v2406", "name": "openfoam-v2406.sif", "version": "v2406", "path": "/i/c",
         "valid": False},
        {"id": "python_3.11", "name": "python_3.11.sif", "version": "3.11", "path": "/i/p"},
    ]
    assert t.resolve_image("openfoam*", images)["id"] == "openfoam-v2312"
    assert t.resolve_image("openfoam-v2212", images)["id"] == "openfoam-v2212"
    assert t.resolve_image("python_3.11.sif", images)["id"] == "python_3.11"
    assert t.resolve_image("lammps*", images) is None


def test_yaml_aliases_are_refused_before_they_can_expand():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for level in "bcdefghij":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"
    parsed = parse(MINIMAL + bomb + "description: *j\n")
    assert not parsed.valid
    assert "aliases" in parsed.errors[0]["message"]


def test_deeply_nested_yaml_is_refused_with_its_line():
    parsed = parse(MINIMAL + "description:\n  " + "[" * 5000 + "]" * 5000 + "\n")
    assert not parsed.valid
    assert "deeper than 64" in parsed.errors[0]["message"]
    assert parsed.errors[0]["line"] > 1
