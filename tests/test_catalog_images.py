"""The image catalog end to end: real SIF files in a temporary shared folder,
a real daemon, changes made the way administrators make them (cp, mv, rsync's
temporary names, slow copies), no scan calls unless a test is about scanning.
"""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from support.waiting import wait_for
from support.daemon import REPO
from support import sifstandins
from support.sifbuild import build_sif, make_squashfs, rootfs_tree, sif_bytes

# Stand-ins of real images always; the real ones too when PORTAL_TEST_SIF_FIXTURES is set.
REAL = sifstandins.real_folder()
WAIT = 30   # generous bound for asynchronous effects; never a timing assertion
# Watching and reading files does not depend on the database: one backend is enough.
ONE_BACKEND = pytest.mark.databases("sqlite")





def listing(daemon, user="alice", admin=False, **params):
    answer = daemon.get("/api/v2/apptainer/images", user=user, admin=admin, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def by_name(daemon, admin=True, **params):
    return {i["name"]: i for i in listing(daemon, admin=admin, include_invalid=admin,
                                           **params)["images"]}


def drop(tmp_path, images_root, relpath, **kwargs):
    """Build an image outside the tree and cp it in, as an admin would."""
    source = build_sif(str(tmp_path / "build" / relpath.replace("/", "_")), **kwargs)
    target = os.path.join(images_root, relpath)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    return target


@pytest.fixture
def small_squashfs():
    """One root filesystem shared by many images: building is the slow part."""
    return make_squashfs(rootfs_tree(labels={}, apps={"hello": {}}))


def test_dropped_images_appear_with_their_metadata(daemon, shared_dir, tmp_path):
    drop(tmp_path, shared_dir.images, "compute/python_3.11.sif",
         labels={"org.opencontainers.image.description": "Python with NumPy"},
         apps={"hello": {"help": "Says hello."}, "world": {}})
    drop(tmp_path, shared_dir.images, "viz/openfoam-v2312.sif",
         labels={"org.opencontainers.image.version": "2312-custom"})
    images = wait_for(lambda: len(by_name(daemon)) == 2 and by_name(daemon), message="2 images")
    python = images["python_3.11.sif"]
    assert python["id"] == "python_3.11"
    assert python["path"] == os.path.join(shared_dir.images, "compute", "python_3.11.sif")
    assert python["type"] == "compute"
    assert python["version"] == "3.11"
    assert python["apps"] == ["hello", "world"]
    assert python["app_details"][0] == {"name": "hello", "help": "Says hello."}
    assert python["description"] == "Python with NumPy"
    assert python["partitions"] == ["compute", "group1"]
    assert python["valid"] is True and python["error"] is None
    assert python["size"] == os.path.getsize(python["path"])
    assert python["arch"] == "amd64" and len(python["sif_id"]) == 36
    assert images["openfoam-v2312.sif"]["version"] == "2312-custom"
    assert images["openfoam-v2312.sif"]["partitions"] == ["viz"]

    detail = daemon.get("/api/v2/apptainer/images/python_3.11", user="alice")
    assert detail.status_code == 200
    assert detail.json()["deffile"] == {"bootstrap": "docker", "from": "python:3.11-slim"}
    missing = daemon.get("/api/v2/apptainer/images/nope", user="alice")
    assert missing.status_code == 404
    assert missing.json()["error"] == "image_not_found"

    # Replace (cp over it), then delete: both followed without a scan call.
    drop(tmp_path, shared_dir.images, "compute/python_3.11.sif",
         labels={"org.opencontainers.image.description": "Python, rebuilt"})
    wait_for(lambda: by_name(daemon)["python_3.11.sif"]["description"] == "Python, rebuilt",
             message="replaced image")
    os.remove(os.path.join(shared_dir.images, "viz", "openfoam-v2312.sif"))
    wait_for(lambda: list(by_name(daemon)) == ["python_3.11.sif"], message="deletion")


@ONE_BACKEND
def test_slow_copy_never_appears_half_way(daemon_factory, shared_dir, tmp_path):
    daemon = daemon_factory(config={"catalog": {"settle_seconds": 3}})
    data = sif_bytes(labels={"complete": "yes"})
    target = os.path.join(shared_dir.images, "compute", "slow.sif")
    seen_early = []

    def watch():
        while not done.is_set():
            seen_early.extend(by_name(daemon).get("slow.sif", {}).items())
            time.sleep(0.1)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        pieces = 8
        step = len(data) // pieces + 1
        with open(target, "wb") as handle:
            for start in range(0, len(data), step):
                handle.write(data[start:start + step])
                handle.flush()
                time.sleep(0.3)   # well inside the settle time between two pieces
    finally:
        done.set()
        watcher.join()
    assert seen_early == []
    image = wait_for(lambda: by_name(daemon).get("slow.sif"), message="the settled copy")
    assert image["valid"] is True
    assert image["labels"] == {"complete": "yes"}


@ONE_BACKEND
def test_rename_into_place_is_indexed_without_waiting_to_settle(daemon_factory, shared_dir,
                                                                tmp_path):
    # A settle time far beyond the wait bound: only "renamed into place" can index it.
    daemon = daemon_factory(config={"catalog": {"settle_seconds": 600}})
    temporary = os.path.join(shared_dir.images, "compute", ".renamed.sif.Xa91bQ")  # rsync-style
    with open(temporary, "wb") as handle:
        handle.write(sif_bytes(labels={"via": "rename"}))
    final = os.path.join(shared_dir.images, "compute", "renamed.sif")
    os.rename(temporary, final)
    image = wait_for(lambda: by_name(daemon).get("renamed.sif"), message="renamed image")
    assert image["labels"] == {"via": "rename"}
    assert ".renamed.sif.Xa91bQ" not in by_name(daemon)
    # A move out of the catalog removes it.
    os.rename(final, os.path.join(shared_dir.root, "renamed.sif"))
    wait_for(lambda: "renamed.sif" not in by_name(daemon), message="moved away")


def test_invalid_files_are_kept_for_admins_and_logged_once(daemon, shared_dir, tmp_path):
    compute = os.path.join(shared_dir.images, "compute")
    with open(os.path.join(compute, "notes.sif"), "w") as handle:
        handle.write("not an image at all\n" * 50)
    data = sif_bytes()
    with open(os.path.join(compute, "cut.sif"), "wb") as handle:
        handle.write(data[: len(data) - 1000])
    drop(tmp_path, shared_dir.images, "compute/good.sif")
    wait_for(lambda: len(by_name(daemon)) == 3, message="3 entries")
    entries = by_name(daemon)
    assert entries["notes.sif"]["valid"] is False
    assert "not a SIF image" in entries["notes.sif"]["error"]
    assert entries["cut.sif"]["valid"] is False
    assert "truncated" in entries["cut.sif"]["error"]

    assert [i["name"] for i in listing(daemon)["images"]] == ["good.sif"]
    refused = daemon.get("/api/v2/apptainer/images", user="alice", params={"include_invalid": "true"})
    assert refused.status_code == 403
    assert daemon.get("/api/v2/apptainer/images/notes", user="alice").status_code == 404
    assert daemon.get("/api/v2/apptainer/images/notes", user="alice", admin=True).json()["valid"] is False

    for _ in range(2):   # rescans do not log unchanged invalid files again
        assert daemon.post("/api/v2/apptainer/scan", user="alice", admin=True).json()["invalid"] == 2
    assert daemon.logs().count("notes.sif is invalid") == 1

    # Fixed in place: re-read and valid.
    shutil.copyfile(os.path.join(compute, "good.sif"), os.path.join(compute, "notes.sif"))
    wait_for(lambda: by_name(daemon)["notes.sif"]["valid"], message="repaired file")


@ONE_BACKEND
def test_polling_watcher_follows_the_folder(daemon_factory, shared_dir, tmp_path):
    daemon = daemon_factory(config={"catalog": {"watcher": "poll"}})
    checks = daemon.get("/readyz", user="alice", admin=True).json()["checks"]  # details: admins only
    assert "images: poll" in checks["catalog"]["detail"]
    drop(tmp_path, shared_dir.images, "viz/polled.sif")
    wait_for(lambda: "polled.sif" in by_name(daemon), message="polled image")
    os.remove(os.path.join(shared_dir.images, "viz", "polled.sif"))
    wait_for(lambda: "polled.sif" not in by_name(daemon), message="polled deletion")


def test_restart_picks_up_changes_made_while_down(daemon, shared_dir, tmp_path):
    drop(tmp_path, shared_dir.images, "compute/stays.sif")
    drop(tmp_path, shared_dir.images, "compute/goes.sif")
    wait_for(lambda: len(by_name(daemon)) == 2, message="2 images")
    daemon.stop()
    os.remove(os.path.join(shared_dir.images, "compute", "goes.sif"))
    drop(tmp_path, shared_dir.images, "viz/new.sif")
    # Copied with its old mtime kept (cp -p): still found, by size/inode.
    daemon.start()
    wait_for(lambda: sorted(by_name(daemon)) == ["new.sif", "stays.sif"], message="reconciled")


def test_two_daemons_index_one_folder_into_one_database(daemon_factory, shared_dir, tmp_path,
                                                        small_squashfs):
    first = daemon_factory()
    second = daemon_factory()
    for number in range(12):
        drop(tmp_path, shared_dir.images, f"compute/app{number:02d}.sif", squashfs=small_squashfs,
             with_inspect_metadata=False)
    for daemon in (first, second):
        wait_for(lambda d=daemon: listing(d, limit=100)["total"] == 12, message="12 images")
    # Both scan at once: idempotent, no duplicates, nothing lost.
    answers = []
    threads = [threading.Thread(target=lambda d=d: answers.append(
        d.post("/api/v2/apptainer/scan", user="alice", admin=True))) for d in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200]
    os.remove(os.path.join(shared_dir.images, "compute", "app00.sif"))
    for daemon in (first, second):
        names = wait_for(lambda d=daemon: (lambda n: len(n) == 11 and n)(
            [i["name"] for i in listing(d)["images"]]), message="11 images")
        assert names == [f"app{n:02d}.sif" for n in range(1, 12)]


def test_filters_paging_and_partitions(daemon, shared_dir, tmp_path, small_squashfs):
    drop(tmp_path, shared_dir.images, "compute/python_3.11.sif",
         apps={"jupyter": {}}, labels={"description": "Python for notebooks"})
    drop(tmp_path, shared_dir.images, "compute/gromacs-2023.3-cuda.sif",
         labels={"hpcportal.partitions": "gpu, compute"})
    drop(tmp_path, shared_dir.images, "viz/paraview_5.11.sif", labels={"Vendor": "Kitware"})
    drop(tmp_path, shared_dir.images, "gpu/pytorch-v2.1.sif")
    with open(os.path.join(shared_dir.images, "compute", "python_3.11.sif.yaml"), "w") as handle:
        handle.write("description: Python 3.11 (site build)\ntags: [python, jupyter]\n"
                     "partitions: [compute, interactive]\ngpu: false\n")
    wait_for(lambda: (lambda i: len(i) == 4 and i["python_3.11.sif"]["tags"] == ["python", "jupyter"])(
        by_name(daemon)), message="images and sidecar")
    images = by_name(daemon)
    assert len(images) == 4
    assert images["python_3.11.sif"]["partitions"] == ["compute", "interactive"]
    assert images["python_3.11.sif"]["partitions_from"] == "sidecar"
    assert images["python_3.11.sif"]["description"] == "Python 3.11 (site build)"
    assert images["gromacs-2023.3-cuda.sif"]["partitions"] == ["gpu", "compute"]
    assert images["gromacs-2023.3-cuda.sif"]["version"] == "2023.3"
    assert images["pytorch-v2.1.sif"]["partitions"] == ["gpu"]   # unmapped type: its own name
    assert images["pytorch-v2.1.sif"]["version"] == "v2.1"

    def names(**params):
        return [i["name"] for i in listing(daemon, **params)["images"]]

    assert names(partition="compute") == ["gromacs-2023.3-cuda.sif", "python_3.11.sif"]
    assert names(partition="gpu") == ["gromacs-2023.3-cuda.sif", "pytorch-v2.1.sif"]
    assert names(partition="interactive") == ["python_3.11.sif"]
    assert names(type="viz") == ["paraview_5.11.sif"]
    assert names(app="JUPYTER") == ["python_3.11.sif"]
    assert names(q="kitware") == ["paraview_5.11.sif"]          # a label value
    assert names(q="SITE BUILD") == ["python_3.11.sif"]         # the description
    assert names(q="jupyter") == ["python_3.11.sif"]            # apps and tags
    assert listing(daemon)["total"] == len(listing(daemon)["images"]) == 4   # no limit by default
    page = listing(daemon, limit=2, offset=1)
    assert page["total"] == 4 and len(page["images"]) == 2
    assert daemon.get("/api/v2/apptainer/images", user="alice",
                      params={"limit": 0}).status_code == 400

    # The sidecar is part of the image: editing it refreshes the entry.
    with open(os.path.join(shared_dir.images, "compute", "python_3.11.sif.yaml"), "w") as handle:
        handle.write("partitions: [debug]\n")
    wait_for(lambda: names(partition="debug") == ["python_3.11.sif"], message="sidecar change")
    # A broken sidecar is reported, and the image stays usable with its own metadata.
    with open(os.path.join(shared_dir.images, "viz", "paraview_5.11.sif.yaml"), "w") as handle:
        handle.write("partitions: [unclosed\n")
    paraview = wait_for(lambda: (lambda i: i["warnings"] and i)(by_name(daemon)["paraview_5.11.sif"]),
                        message="sidecar warning")
    assert paraview["valid"] is True and paraview["partitions"] == ["viz"]
    assert "not valid YAML" in paraview["warnings"][0]


@ONE_BACKEND
def test_same_stem_in_two_types_gets_qualified_ids(daemon, shared_dir, tmp_path):
    drop(tmp_path, shared_dir.images, "compute/tool.sif")
    drop(tmp_path, shared_dir.images, "viz/tool.sif")
    drop(tmp_path, shared_dir.images, "viz/other name.sif")
    images = wait_for(lambda: (lambda i: len(i) == 3 and i)(listing(daemon)["images"]),
                      message="3 images")
    assert sorted(i["id"] for i in images) == ["other-name", "tool~compute", "tool~viz"]
    assert daemon.get("/api/v2/apptainer/images/tool~viz", user="alice").json()["type"] == "viz"
    assert daemon.get("/api/v2/apptainer/images/other-name~viz", user="alice").status_code == 200


def test_etag_and_cache_control(daemon, shared_dir, tmp_path):
    drop(tmp_path, shared_dir.images, "compute/cached.sif")
    wait_for(lambda: listing(daemon)["total"] == 1, message="1 image")
    first = daemon.get("/api/v2/apptainer/images", user="alice")
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.headers["Cache-Control"] == "private, max-age=300"
    again = daemon.get("/api/v2/apptainer/images", user="alice", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    item = daemon.get("/api/v2/apptainer/images/cached", user="alice")
    assert daemon.get("/api/v2/apptainer/images/cached", user="alice",
                      headers={"If-None-Match": item.headers["ETag"]}).status_code == 304
    drop(tmp_path, shared_dir.images, "compute/second.sif")
    wait_for(lambda: daemon.get("/api/v2/apptainer/images", user="alice",
                                headers={"If-None-Match": etag}).status_code == 200,
             message="a new ETag after a change")


def test_scan_is_for_admins_and_reports_counts(daemon, shared_dir, tmp_path):
    denied = daemon.post("/api/v2/apptainer/scan", user="alice")
    assert denied.status_code == 403
    assert denied.json()["error"] == "admin_only"
    daemon.stop()   # changes the watcher cannot see: only the scan finds them
    drop(tmp_path, shared_dir.images, "compute/a.sif", created=time.time() - 3600)
    with open(os.path.join(shared_dir.images, "compute", "b.sif"), "w") as handle:
        handle.write("junk")
    old = time.time() - 3600
    for name in ("a.sif", "b.sif"):
        os.utime(os.path.join(shared_dir.images, "compute", name), (old, old))
    daemon.start()
    answer = daemon.post("/api/v2/apptainer/scan", user="alice", admin=True).json()
    # The start-up reconciliation may have been first; together they found both.
    assert answer["success"] is True and answer["invalid"] == 1
    assert answer["removed"] == 0 and isinstance(answer["duration_ms"], int)
    assert listing(daemon)["total"] == 1
    metrics = daemon.get("/metrics").text
    assert 'hpcportal_catalog_files{kind="images",state="valid"} 1.0' in metrics
    assert 'hpcportal_catalog_files{kind="images",state="invalid"} 1.0' in metrics
    assert "hpcportal_catalog_scan_duration_seconds_count" in metrics
    assert "hpcportal_catalog_watcher_events_total" in metrics


@ONE_BACKEND
@pytest.mark.parametrize("source", ["stand-in"] + (["real"] if REAL else []))
def test_real_images_are_served_with_their_metadata(daemon, shared_dir, tmp_path, source):
    folder = REAL if source == "real" else str(tmp_path / "standins")
    if source == "stand-in":
        sifstandins.build_all(folder)
    # Symlinks: the images are used in place, never copied.
    for name, target in (("compute/busybox_1.33.sif", "busybox_amd64.sif"),
                         ("compute/inspecter.sif", "inspecter_container_2019.sif"),
                         ("viz/empty.sif", "sylabs-empty.sif")):
        assert os.path.exists(os.path.join(folder, target)), (folder, target)
        os.symlink(os.path.join(folder, target), os.path.join(shared_dir.images, name))
    images = wait_for(lambda: (lambda i: len(i) == 3 and i)(by_name(daemon)), message="fixtures")
    inspecter = images["inspecter.sif"]
    assert inspecter["apps"] == ["hello", "world"]
    assert inspecter["labels"]["e2e"] == "awsome"
    assert "e2e test container" in inspecter["description"]
    busybox = images["busybox_1.33.sif"]
    assert busybox["deffile"] == {"bootstrap": "docker", "from": "busybox:1.33.1"}
    assert busybox["created"] == "2021-08-02T19:09:36Z" and busybox["signed"] is True
    assert busybox["version"] == "1.33"
    assert images["empty.sif"]["valid"] is False
    assert "no root filesystem" in images["empty.sif"]["error"]


@ONE_BACKEND
def test_scan_command_prints_what_changed(daemon_factory, shared_dir, tmp_path):
    daemon = daemon_factory(start=False)
    drop(tmp_path, shared_dir.images, "compute/cli.sif", created=time.time() - 3600)
    old = time.time() - 3600
    os.utime(os.path.join(shared_dir.images, "compute", "cli.sif"), (old, old))

    def scan(*flags):
        return subprocess.run([sys.executable, "-m", "hpcportal", "--config", daemon.config_path,
                               "scan", *flags], capture_output=True, text=True, cwd=REPO,
                              timeout=120)

    first = scan("--images")
    assert first.returncode == 0, first.stderr
    assert "images: added compute/cli.sif" in first.stdout
    assert "1 added" in first.stdout
    second = scan("--images")
    assert "0 added, 0 updated, 0 removed" in second.stdout and "1 unchanged" in second.stdout
