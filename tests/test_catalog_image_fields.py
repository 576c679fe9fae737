"""Fields of the image catalog derived from names, labels and sidecars."""

import pytest

from hpcportal.catalog.images import read_sidecar, safe_stem, version_from_name


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
