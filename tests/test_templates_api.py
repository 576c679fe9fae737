"""The template catalog against a real daemon and real files."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from support.templates import LIST, drop, simple
from support.waiting import wait_for
from support import sifbuild

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "templates", "official")


def listing(daemon, user="alice", admin=False, **params):
    answer = daemon.get(LIST, user=user, admin=admin, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def ids(body):
    return sorted(t["id"] for t in body["templates"])


def find(daemon, template_id, user="alice", admin=False, **params):
    return daemon.get(f"{LIST}/{template_id}", user=user, admin=admin, params=params)


@pytest.fixture
def with_examples(shared_dir):
    for name in os.listdir(EXAMPLES):
        shutil.copy(os.path.join(EXAMPLES, name), os.path.join(shared_dir.templates, "official", name))
    return shared_dir


def test_examples_are_indexed_and_listed_with_filters_paging_and_etag(with_examples, daemon):
    body = wait_for(lambda: (b := listing(daemon)) and b["total"] == 6 and b)
    assert all(t["valid"] and t["source"] == "official" for t in body["templates"])
    openfoam = next(t for t in body["templates"] if t["id"] == "official.openfoam-simplefoam")
    assert openfoam["category"] == "cfd"
    assert openfoam["versions"] == ["1.0.0"]
    assert openfoam["defaults"]["partition"] == "compute"
    assert openfoam["slurm"]["nodes"] == {"default": 1, "min": 1, "max": 4, "fixed": False}
    assert openfoam["files"][0]["env"] == "FILE_CASE"
    assert openfoam["parameters"][0]["env"] == "PARAM_END_TIME"
    # No image catalog entry matches "openfoam*" yet.
    assert openfoam["ready"] is False and openfoam["image"] is None
    assert any(w["path"] == "apptainer.image" for w in openfoam["warnings"])
    assert "script" not in openfoam

    assert ids(listing(daemon, category="md")) == ["official.gromacs-mdrun", "official.lammps-lj"]
    assert listing(daemon, source="official")["total"] == 6
    assert listing(daemon, source="community")["total"] == 0
    assert ids(listing(daemon, tag="GPU")) == ["official.gromacs-mdrun", "official.pytorch-train-gpu"]
    assert ids(listing(daemon, q="simplefoam")) == ["official.openfoam-simplefoam"]
    page = listing(daemon, limit=2, offset=5)
    assert page["total"] == 6 and len(page["templates"]) == 1

    answer = daemon.get(LIST, user="alice")
    assert answer.headers["Cache-Control"] == "private, max-age=300"
    etag = answer.headers["ETag"]
    again = daemon.get(LIST, user="alice", headers={"If-None-Match": etag})
    assert again.status_code == 304

    detail = find(daemon, "official.paraview-batch-render")
    assert detail.status_code == 200
    assert detail.json()["slurm"]["partition"] == {"default": "viz", "fixed": True}
    assert "pvbatch" in detail.json()["script"]

    assert daemon.get(LIST, params={"limit": 0}, user="alice").status_code == 400
    assert daemon.get(LIST).status_code == 401


def test_the_list_without_limit_has_every_template_and_limit_still_pages(shared_dir, daemon):
    # More than the default page size of other lists (100): the dashboard does not page.
    names = [f"Many {index:03d}" for index in range(130)]
    for index, name in enumerate(names):
        drop(shared_dir, f"official/many-{index:03d}.yaml", simple(name=name))
    body = wait_for(lambda: (b := listing(daemon)) and b["total"] == 130 and b, timeout=120)
    assert [t["name"] for t in body["templates"]] == names
    page = listing(daemon, limit=50, offset=100)
    assert page["total"] == 130 and [t["name"] for t in page["templates"]] == names[100:130]
    assert [t["name"] for t in listing(daemon, limit=10, offset=5)["templates"]] == names[5:15]
    assert [t["name"] for t in listing(daemon, offset=125)["templates"]] == names[125:]


def test_schema_is_served(daemon):
    answer = daemon.get(f"{LIST}/schema", user="alice")
    assert answer.status_code == 200
    schema = answer.json()
    assert schema["required"] == ["name", "version", "script"]
    assert "parameters" in schema["properties"]


def test_drop_edit_and_delete_follow_the_folder(shared_dir, daemon):
    path = drop(shared_dir, "official/demo.yaml", simple(name="Demo"))
    wait_for(lambda: find(daemon, "official.demo").status_code == 200)
    # Edited in place, as with an editor: the watcher re-reads it once settled.
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(simple(name="Demo renamed", version="1.0.1"))
    changed = wait_for(lambda: (a := find(daemon, "official.demo")).status_code == 200
                       and a.json()["version"] == "1.0.1" and a.json())
    assert changed["name"] == "Demo renamed"
    assert changed["versions"] == ["1.0.1"]
    os.remove(path)
    wait_for(lambda: find(daemon, "official.demo").status_code == 404)
    assert listing(daemon)["total"] == 0


def test_versions_list_the_newest_and_serve_each(shared_dir, daemon):
    for version in ("1.0.0", "1.10.0", "1.2.0", "2.0.0-rc.1"):
        text = "id: solver\n" + simple(name=f"Solver {version}", version=version)
        drop(shared_dir, f"community/solver/v{version}.yaml", text)
    body = wait_for(lambda: (b := listing(daemon)) and b["total"] == 1
                    and len(b["templates"][0]["versions"]) == 4 and b)
    (item,) = body["templates"]
    assert item["id"] == "community.solver"
    assert item["versions"] == ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1"]
    assert item["version"] == "2.0.0-rc.1"
    older = find(daemon, "community.solver", version="1.2.0")
    assert older.status_code == 200 and older.json()["name"] == "Solver 1.2.0"
    assert find(daemon, "community.solver", version="3.0.0").status_code == 404
    assert find(daemon, "community.solver", version="latest").status_code == 400

    # The same id and version twice: the first file by path is used, the other is reported.
    drop(shared_dir, "community/solver/z-copy.yaml", "id: solver\n" + simple(version="1.0.0"))
    invalid = wait_for(lambda: [t for t in listing(daemon, user="bob", admin=True, include_invalid="true")
                                ["templates"] if not t["valid"]])
    assert invalid[0]["relpath"] == "community/solver/z-copy.yaml"
    assert "also defined by community/solver/v1.0.0.yaml" in invalid[0]["errors"][0]["message"]


def test_users_templates_are_visible_to_their_owner_and_admins_only(shared_dir, daemon):
    drop(shared_dir, "official/shared.yaml", simple(name="Shared"))
    drop(shared_dir, "users/alice/mine.yaml", simple(name="Alice's own"))
    wait_for(lambda: listing(daemon, user="alice")["total"] == 2)
    assert ids(listing(daemon, user="alice")) == ["official.shared", "users.alice.mine"]
    assert ids(listing(daemon, user="alice", source="users/alice")) == ["users.alice.mine"]
    assert ids(listing(daemon, user="alice", source="users")) == ["users.alice.mine"]
    assert ids(listing(daemon, user="bob")) == ["official.shared"]
    assert ids(listing(daemon, user="bob", source="users/alice")) == []
    assert find(daemon, "users.alice.mine", user="bob").status_code == 404
    mine = find(daemon, "users.alice.mine", user="alice").json()
    assert mine["owner"] == "alice" and mine["source"] == "users/alice"
    assert ids(listing(daemon, user="bob", admin=True)) == ["official.shared", "users.alice.mine"]
    render = daemon.post(f"{LIST}/users.alice.mine/render", user="bob", json={"parameters": {"text": "x"}})
    assert render.status_code == 404


def test_invalid_templates_are_listed_for_admins_with_every_problem(shared_dir, daemon):
    drop(shared_dir, "official/good.yaml", simple(name="Good"))
    drop(shared_dir, "official/broken-yaml.yaml", 'name: x\nversion: "1.0.0"\nscript: |\n  echo\n tags: [a\n')
    drop(shared_dir, "official/broken-schema.yaml", simple().replace("script: |", "files:\n  - name: in\n"
                                                                       "    patterns: '*.txt'\nscript: |"))
    wait_for(lambda: daemon.post(f"{LIST}/scan", user="bob", admin=True).json()["invalid"] == 2)
    assert ids(listing(daemon)) == ["official.good"]
    assert daemon.get(LIST, user="alice", params={"include_invalid": "true"}).status_code == 403
    body = listing(daemon, user="bob", admin=True, include_invalid="true")
    assert body["total"] == 3
    problems = {t["relpath"]: t["errors"] for t in body["templates"] if not t["valid"]}
    (yaml_problem,) = problems["official/broken-yaml.yaml"]
    assert yaml_problem["line"] == 5 and "column" in yaml_problem
    (schema_problem,) = problems["official/broken-schema.yaml"]
    assert schema_problem["path"] == "files[0].patterns"
    assert schema_problem["line"] == 16
    assert find(daemon, "official.broken-schema").status_code == 404

    # Fixing the file makes it valid again.
    drop(shared_dir, "official/broken-schema.yaml", simple(name="Fixed"))
    wait_for(lambda: find(daemon, "official.broken-schema").status_code == 200)


def test_scan_is_admin_only_and_counts(shared_dir, daemon):
    assert daemon.post(f"{LIST}/scan", user="alice").status_code == 403
    path = os.path.join(shared_dir.templates, "official", "late.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(simple(name="Late"))
    old = time.time() - 60
    os.utime(path, (old, old))  # settled long ago: a scan indexes it at once
    answer = daemon.post(f"{LIST}/scan", user="bob", admin=True)
    assert answer.status_code == 200
    counts = answer.json()
    assert counts["success"] is True
    assert counts["added"] + counts["unchanged"] == 1
    assert {"updated", "removed", "invalid", "duration_ms"} <= set(counts)
    assert find(daemon, "official.late").status_code == 200


def test_hpcportald_scan_prints_invalid_templates_with_their_problems(shared_dir, daemon):
    drop(shared_dir, "official/bad.yaml", simple().replace('version: "1.0.0"', "version: 1.0"))
    old = time.time() - 60
    os.utime(os.path.join(shared_dir.templates, "official", "bad.yaml"), (old, old))
    out = subprocess.run([sys.executable, "-m", "hpcportal", "--config", daemon.config_path, "scan",
                          "--templates"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "official/bad.yaml" in out.stdout
    assert "quote it" in out.stdout


def test_ready_follows_the_image_catalog(shared_dir, daemon):
    drop(shared_dir, "official/contained.yaml",
         simple(name="Contained").replace("script: |", "apptainer:\n  image: \"demo*\"\nscript: |"))
    first = wait_for(lambda: (a := find(daemon, "official.contained")).status_code == 200 and a.json())
    assert first["ready"] is False
    assert daemon.post(f"{LIST}/official.contained/render", user="alice",
                       json={"parameters": {"text": "x"}}).json()["errors"]["image"]
    image_path = os.path.join(shared_dir.images, "compute", "demo_1.0.sif")
    sifbuild.build_sif(image_path + ".part")
    os.replace(image_path + ".part", image_path)
    ready = wait_for(lambda: (t := find(daemon, "official.contained").json())["ready"] and t)
    assert ready["image"]["path"] == image_path
    assert not [w for w in ready["warnings"] if w["path"] == "apptainer.image"]
    assert ids(listing(daemon, image="demo_1.0")) == ["official.contained"]
    assert ids(listing(daemon, image="other_2.0")) == []
    rendered = daemon.post(f"{LIST}/official.contained/render", user="alice", json={"parameters": {"text": "x"}})
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["image"]["path"] == image_path
    assert f"{image_path} /bin/bash" in rendered.json()["script"]
    os.remove(image_path)
    wait_for(lambda: find(daemon, "official.contained").json()["ready"] is False)


def test_render_checks_values_and_returns_the_batch_script(shared_dir, daemon, tmp_path):
    drop(shared_dir, "official/echo.yaml", simple(name="Echo"))
    wait_for(lambda: find(daemon, "official.echo").status_code == 200)
    url = f"{LIST}/official.echo/render"

    bad = daemon.post(url, user="alice", json={"parameters": {"count": 9, "nope": 1},
                                               "overrides": {"nodes": 3, "partition": "viz"}})
    assert bad.status_code == 400
    assert bad.json()["success"] is False
    assert set(bad.json()["errors"]) == {"parameters.text", "parameters.count", "parameters.nope",
                                         "overrides.nodes", "overrides.partition"}
    assert daemon.post(f"{LIST}/official.nothing/render", user="alice", json={}).status_code == 404
    odd = daemon.post(url, user="alice", json={"parameters": {"text": "x"},
                                               "files": [{"storage_path": "/shared/a\n#SBATCH --uid=0/x.txt"}]})
    assert odd.status_code == 400 and "files[0]" in odd.json()["errors"]
    # Commas, spaces and Korean letters are a file name like any other: the path reaches the job quoted.
    named = daemon.post(url, user="alice", json={"parameters": {"text": "x"},
                                                 "files": [{"storage_path": "/shared/a,/데이터 (1).txt"}]})
    assert named.status_code == 200, named.text
    assert named.json()["environment"]["INPUT_FILE_0"] == "/shared/a,/데이터 (1).txt"
    assert daemon.post(url, user="alice", data="[", headers={"Content-Type": "application/json"}).status_code == 400

    crafted = "x\n#SBATCH --uid=0\n$(touch pwned) `touch pwned2` '; rm -rf ~; '"
    answer = daemon.post(url, user="alice", json={"parameters": {"text": crafted, "count": "3"},
                                                  "overrides": {"partition": "group1"}})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["environment"]["PARAM_TEXT"] == crafted
    assert result["image"] is None
    script = result["script"]
    assert "#SBATCH --partition=group1" in script
    assert not [line for line in script.splitlines() if line.startswith("#SBATCH --uid")]
    # Run it, with the template's script saved where a submit saves it (here: beside it):
    # the value arrives unchanged and nothing in it ran.
    assert script.endswith(f"exec /bin/bash {result['body_path']}\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "script.sh").write_text(result["body"])
    (tmp_path / "job.sh").write_text(script.replace(result["body_path"], str(tmp_path / "script.sh")))
    run = subprocess.run(["bash", "job.sh"], cwd=tmp_path, capture_output=True, timeout=60,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "text.out").read_bytes().decode() == crafted
    assert (tmp_path / "count.out").read_text() == "3"
    assert not list(tmp_path.glob("pwned*"))
    assert (tmp_path / "home").is_dir()


def test_render_takes_the_users_own_uploads_by_file_id(shared_dir, daemon_factory):
    from support.uploads import SMALL, upload

    daemon = daemon_factory(config=SMALL)
    drop(shared_dir, "official/with-file.yaml", simple(name="With file").replace(
        "script: |", "files:\n  - {name: data, patterns: ['*.txt'], max_size: 100}\nscript: |"))
    wait_for(lambda: find(daemon, "official.with-file").status_code == 200)
    url = f"{LIST}/official.with-file/render"
    small = upload(daemon, "alice", b"hello", filename="in.txt")
    big = upload(daemon, "alice", b"x" * 200, filename="big.txt")

    answer = daemon.post(url, user="alice", json={"parameters": {"text": "t"},
                                                  "files": [{"name": "data", "file_id": small["file_id"]}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["environment"]["FILE_DATA"] == small["storage_path"]
    assert answer.json()["environment"]["INPUT_FILE_0"] == small["storage_path"]

    too_big = daemon.post(url, user="alice", json={"parameters": {"text": "t"},
                                                   "files": [{"name": "data", "file_id": big["file_id"]}]})
    assert too_big.status_code == 400 and "larger" in too_big.json()["errors"]["files.data"]
    # A client cannot shrink its upload: the record's size counts.
    lied = daemon.post(url, user="alice", json={"parameters": {"text": "t"}, "files": [
        {"name": "data", "storage_path": big["storage_path"], "filename": "big.txt", "size": 1}]})
    assert lied.status_code == 400 and "larger" in lied.json()["errors"]["files.data"]
    # Another user's upload id is unknown to bob.
    stolen = daemon.post(url, user="bob", json={"parameters": {"text": "t"},
                                                "files": [{"name": "data", "file_id": small["file_id"]}]})
    assert stolen.status_code == 400 and "files[0]" in stolen.json()["errors"]
