"""Fields of the image catalog derived from names, labels and sidecars."""

import pytest

from hpcportal.catalog.images import read_sidecar, safe_stem, version_from_name

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit


@pytest.mark.parametrize("stem,version", [
    ("python_3.11", "3.11"), ("openfoam-v2312", "v2312"), ("gromacs-2023.3-cuda", "2023.3"),
    ("r-4.3.1", "4.3.1"), ("pytorch-v2.1", "v2.1"), ("ubuntu", None), ("tool_latest", None),
])
def test_version_from_the_file_name(stem, version):
    assert version_from_name(stem) == version


def test_ids_are_url_safe():
    assert safe_stem("python_3.11") == "python_3.11"
    assert safe_stem("my image (v2)") == "my-image-v2"
    assert safe_stem("ü") == "image"


def write(tmp_path, text):
    path = tmp_path / "x.sif.yaml"
    path.write_text(text)
    return str(path)


def test_sidecar_values(tmp_path):
    values, error = read_sidecar(write(tmp_path, "description: Site build\nversion: 3.11\n"
                                                 "tags: [a, b]\npartitions: compute, debug\n"
                                                 "gpu: true\n"))
    assert error is None
    assert values == {"description": "Site build", "version": "3.11", "tags": ["a", "b"],
                      "partitions": ["compute", "debug"], "gpu": True}


def test_missing_sidecar_is_no_sidecar(tmp_path):
    assert read_sidecar(str(tmp_path / "none.sif.yaml")) == (None, None)


@pytest.mark.parametrize("text,problem", [
    ("description: [unclosed\n", "not valid YAML"),
    ("- a list\n", "must be a mapping"),
    ("colour: blue\n", "unknown key 'colour'"),
    ("gpu: maybe\n", "gpu must be true or false"),
    ("partitions: {a: 1}\n", "partitions must be a list"),
])
def test_sidecar_problems_are_reported_not_fatal(tmp_path, text, problem):
    values, error = read_sidecar(write(tmp_path, text))
    assert problem in error


def _alias_bomb(levels="bcdefghij"):
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for level in levels:
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{previous},*{previous},*{previous},*{previous},*{previous}]\n"
    return bomb


@pytest.mark.parametrize("text,problem", [
    # Nine nested aliases would expand to millions of strings before any key is looked at.
    (_alias_bomb() + "description: *j\n", "aliases"),
    ("description: &d Site build\nversion: *d\n", "aliases"),
    ("description: " + "[" * 5000 + "]" * 5000 + "\n", "deeper than 64"),
    ("description: {text: Site build}\n", "description must be a single value"),
    ("version: [3, 11]\n", "version must be a single value"),
    ("description: Good\ngpu: maybe\n", "gpu must be true or false"),
    ("description: '" + "x" * 70000 + "'\n", "larger than"),
])
def test_a_refused_sidecar_is_ignored_whole(tmp_path, text, problem):
    values, error = read_sidecar(write(tmp_path, text))
    assert values is None
    assert problem in error


def test_partition_labels_with_aliases_are_not_expanded():
    from hpcportal.catalog.images import _partition_list
    assert _partition_list("[&a x, *a]") is None
    assert _partition_list("[compute, debug]") == ["compute", "debug"]
