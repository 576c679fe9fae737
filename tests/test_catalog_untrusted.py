"""The image catalog against files anyone with write access to the images
folder may have placed: sidecars with aliases, deep nesting or values of the
wrong type are ignored with a warning; an image whose metadata takes more
work than one file may is listed invalid with the reason."""

import os
import shutil

import pytest

from support.sifbuild import build_sif
from support.waiting import wait_for
from test_catalog_sif import crafted_sif

pytestmark = pytest.mark.databases("sqlite")

BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{level}: &{level} [*{chr(ord(level) - 1)},*{chr(ord(level) - 1)},*{chr(ord(level) - 1)},"
    f"*{chr(ord(level) - 1)},*{chr(ord(level) - 1)}]\n" for level in "bcdefghij")


def _images(daemon):
    answer = daemon.get("/api/v2/apptainer/images", user="alice", admin=True,
                        params={"include_invalid": "true"})
    assert answer.status_code == 200, answer.text
    return {image["name"]: image for image in answer.json()["images"]}


def _place(tmp_path, images_root, name, **kwargs):
    source = build_sif(str(tmp_path / name), labels={"description": "from the image"}, **kwargs)
    target = os.path.join(images_root, "compute", name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    return target


@pytest.mark.parametrize("sidecar,reason", [
    (BOMB + "description: *j\n", "aliases"),
    ("description: " + "[" * 3000 + "]" * 3000 + "\n", "deeper than"),
    ("description: {nested: mapping}\npartitions: [debug]\n", "description must be a single value"),
], ids=["alias bomb", "deep nesting", "wrong type"])
def test_a_refused_sidecar_leaves_the_image_listed_with_its_own_metadata(
        daemon, shared_dir, tmp_path, sidecar, reason):
    target = _place(tmp_path, shared_dir.images, "tool_1.0.sif")
    with open(target + ".yaml", "w", encoding="utf-8") as handle:
        handle.write(sidecar)
    image = wait_for(lambda: (lambda i: i and i["warnings"] and i)(_images(daemon).get("tool_1.0.sif")),
                     message="image listed with a warning")
    assert image["valid"] is True
    assert image["description"] == "from the image"
    assert image["partitions_from"] != "sidecar"
    assert any(reason in warning and "ignored" in warning for warning in image["warnings"]), \
        image["warnings"]
    logs = daemon.logs()
    assert "Traceback" not in logs


def test_an_image_over_the_work_budget_is_listed_invalid_with_the_reason(daemon, shared_dir, tmp_path):
    source = crafted_sif(str(tmp_path / "heavy.sif"), slots=16, shared_objects=12,
                         shared_size=8 * 1024 * 1024)
    target = os.path.join(shared_dir.images, "compute", "heavy.sif")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    image = wait_for(lambda: _images(daemon).get("heavy.sif"), message="heavy.sif indexed")
    assert image["valid"] is False
    assert "more than 67108864 bytes" in image["error"]
    # Users do not see it; the catalog goes on serving the others.
    listed = daemon.get("/api/v2/apptainer/images", user="alice").json()["images"]
    assert "heavy.sif" not in [i["name"] for i in listed]
