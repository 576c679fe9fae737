"""The pure-Python SIF reader, on images built here and on real ones.

Real images (built by Singularity and by the SIF reference library) are read in
place from shared/fixtures/sif when that folder exists; those checks are skipped
elsewhere. Our own images are built with tests/support/sifbuild.py.
"""

import os
import shutil
import struct
import subprocess

import pytest

from hpcportal.catalog import sif
from hpcportal.catalog.sif import NotSif, SifError, TruncatedSif, UnsupportedSif, read_sif
from support.sifbuild import build_sif, make_squashfs, rootfs_tree, sif_bytes

# shared/ sits beside the checkout (and beside CI's clone).
FIXTURES = os.environ.get("HPCPORTAL_SIF_FIXTURES") or os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "sif"))


def fixture(name):
    path = os.path.join(FIXTURES, name)
    if not os.path.exists(path):
        pytest.skip(f"real SIF fixture {name} is not available here")
    return path


# -- real images -------------------------------------------------------------

def test_busybox_built_by_singularity_3_8():
    meta = read_sif(fixture("busybox_amd64.sif"))
    assert meta["arch"] == "amd64"
    assert meta["sif_id"] == "4f307b4c-58a8-4753-9c0f-21dceefed4a6"
    assert meta["created"] == "2021-08-02T19:09:36Z"
    assert meta["labels_source"] == "inspect-metadata"
    assert meta["labels"]["org.label-schema.usage.singularity.version"] == "3.8.1"
    assert meta["deffile"] == {"bootstrap": "docker", "from": "busybox:1.33.1"}
    assert meta["apps"] == []
    assert meta["signed"] is True
    assert meta["partition"]["fs"] == "squashfs"
    assert meta["partition"]["type"] == "primary-system"


def test_inspecter_container_with_labels_descriptor_and_apps():
    meta = read_sif(fixture("inspecter_container_2019.sif"))
    assert meta["labels_source"] == "labels-descriptor"
    assert meta["labels"]["e2e"] == "awsome"
    assert meta["labels"]["org.label-schema.image-arch"] == "amd64"
    assert [app["name"] for app in meta["apps"]] == ["hello", "world"]
    assert meta["apps"][0]["labels"] == {"SCIF_APP_NAME": "hello"}
    assert meta["deffile"] == {"bootstrap": "library", "from": "alpine:latest"}
    assert "e2e test container" in meta["help"]
    assert meta["created"] == "2019-09-18T19:29:33Z"


def test_inspecter_container_without_json_metadata_reads_the_squashfs():
    meta = read_sif(fixture("inspecter_container_2019-06.sif"))
    assert meta["labels_source"] == "squashfs"
    assert meta["labels"]["MAINTAINER"] == '"WestleyK <westley@sylabs.io>"'
    assert [app["name"] for app in meta["apps"]] == ["hello", "world"]
    assert meta["arch"] == "amd64"


def test_reproducible_images_of_the_reference_library_have_unset_times():
    meta = read_sif(fixture("sylabs-empty.sif"))
    assert meta["created"] == "unset"
    assert meta["sif_id"] is None
    assert meta["partition"] is None
    assert meta["objects"] == []


@pytest.mark.parametrize("name,arch", [("sylabs-two-groups-signed-dsse.sif", "386"),
                                       ("sylabs-one-group-signed-pgp.sif", "386")])
def test_reference_library_partitions_and_signatures(name, arch):
    meta = read_sif(fixture(name))
    assert meta["arch"] == arch
    assert meta["signed"] is True
    assert meta["partition"]["type"] == "primary-system"


def test_oci_sif_root_index_is_recognised():
    meta = read_sif(fixture("sylabs-one-object-oci-root-index.sif"))
    assert meta["oci"] is True
    assert [o["type"] for o in meta["objects"]] == ["oci-root-index"]


@pytest.mark.skipif(not shutil.which("siftool"), reason="siftool (Debian) is not installed")
def test_descriptor_table_matches_siftool(tmp_path):
    paths = [build_sif(str(tmp_path / "built.sif"), labels={"a": "b"},
                       labels_descriptor={"c": "d"})]
    paths += [os.path.join(FIXTURES, n) for n in sorted(os.listdir(FIXTURES))] \
        if os.path.isdir(FIXTURES) else []
    for path in paths:
        listing = subprocess.run(["siftool", "list", path], capture_output=True, text=True,
                                 check=True).stdout
        rows = [line.split("|") for line in listing.splitlines() if line[:1].isdigit()]
        expected = [(int(r[0]), r[3].strip()) for r in rows]
        reader = sif.SifReader(path)
        ours = [(d.id, f"{d.offset}-{d.offset + d.size}") for d in reader.descriptors]
        assert ours == expected, path


# -- images built here -------------------------------------------------------

def test_labels_apps_and_deffile_from_inspect_metadata(tmp_path):
    path = build_sif(str(tmp_path / "python_3.11.sif"),
                     labels={"org.opencontainers.image.version": "3.11"},
                     apps={"hello": {"help": "Says hello.", "labels": {"lang": "sh"}},
                           "world": {}},
                     help_text="Python image.\n", arch="arm64",
                     deffile="Bootstrap: docker\nFrom: python:3.11\n\n%post\n  pip install x\n")
    meta = read_sif(path)
    assert meta["labels"] == {"org.opencontainers.image.version": "3.11"}
    assert meta["labels_source"] == "inspect-metadata"
    assert meta["apps"] == [{"name": "hello", "help": "Says hello.", "labels": {"lang": "sh"}},
                            {"name": "world"}]
    assert meta["deffile"] == {"bootstrap": "docker", "from": "python:3.11"}
    assert meta["help"] == "Python image."
    assert meta["arch"] == "arm64"
    assert meta["created"].endswith("Z") and meta["created"] != "unset"
    assert len(meta["sif_id"]) == 36


def test_squashfs_fallback_reads_labels_apps_and_help(tmp_path):
    path = build_sif(str(tmp_path / "old.sif"), with_inspect_metadata=False,
                     labels={"maintainer": "hpc team"}, help_text="Old image.\n",
                     apps={"solver": {"help": "Runs the solver.", "labels": {"v": "2"}}})
    meta = read_sif(path)
    assert meta["labels_source"] == "squashfs"
    assert meta["labels"] == {"maintainer": "hpc team"}
    assert meta["apps"] == [{"name": "solver", "help": "Runs the solver.",
                             "labels": {"SCIF_APP_NAME": "solver", "v": "2"}}]
    assert meta["help"] == "Old image."


def test_definition_file_only_inside_the_squashfs(tmp_path):
    path = build_sif(str(tmp_path / "old.sif"), with_inspect_metadata=False,
                     deffile_descriptor=False, deffile="Bootstrap: library\nFrom: alpine:3.19\n")
    meta = read_sif(path)
    assert meta["deffile"] == {"bootstrap": "library", "from": "alpine:3.19"}
    assert "deffile" not in [o["type"] for o in meta["objects"]]


def test_labels_descriptor_comes_before_the_squashfs(tmp_path):
    path = build_sif(str(tmp_path / "x.sif"), with_inspect_metadata=False,
                     labels={"inside": "1"}, labels_descriptor={"outside": "2"})
    meta = read_sif(path)
    assert meta["labels"] == {"outside": "2"}
    assert meta["labels_source"] == "labels-descriptor"


def test_xz_compressed_root_filesystem(tmp_path):
    squashfs = make_squashfs(rootfs_tree(labels={"comp": "xz"}, apps={"a": {}}), compression="xz")
    path = build_sif(str(tmp_path / "xz.sif"), with_inspect_metadata=False, squashfs=squashfs)
    meta = read_sif(path)
    assert meta["labels"] == {"comp": "xz"}
    assert [a["name"] for a in meta["apps"]] == ["a"]


def test_deterministic_build_has_unset_created_and_no_id(tmp_path):
    meta = read_sif(build_sif(str(tmp_path / "r.sif"), deterministic=True))
    assert meta["created"] == "unset"
    assert meta["sif_id"] is None


def test_data_container_takes_arch_from_its_partition(tmp_path):
    meta = read_sif(build_sif(str(tmp_path / "d.sif"), partition_type=3, arch="ppc64le"))
    assert meta["arch"] == "ppc64le"
    assert meta["partition"]["type"] == "data"


def test_encrypted_root_filesystem_is_not_opened(tmp_path):
    path = build_sif(str(tmp_path / "secret.sif"), fs_type=5, with_inspect_metadata=False,
                     labels_descriptor={"owner": "lab"})
    meta = read_sif(path)
    assert meta["encrypted"] is True
    assert meta["labels"] == {"owner": "lab"}
    assert any("encrypted" in w for w in meta["warnings"])


def test_without_unsquashfs_the_image_is_still_read(tmp_path):
    path = build_sif(str(tmp_path / "old.sif"), with_inspect_metadata=False, labels={"a": "b"})
    meta = read_sif(path, unsquashfs=str(tmp_path / "no-such-unsquashfs"))
    assert meta["labels"] == {}
    assert any("unsquashfs" in w for w in meta["warnings"])


def test_deffile_summary_takes_the_last_stage():
    text = ("Bootstrap: docker\nFrom: golang:1.21\nStage: build\n\n%post\n  From: not-this\n"
            "Bootstrap: docker\nFrom: alpine:3.19\nStage: final\n%runscript\n  exec app\n")
    assert sif.deffile_summary(text) == {"bootstrap": "docker", "from": "alpine:3.19",
                                         "stage": "final"}
    assert sif.deffile_summary("") is None


# -- files that are not usable images -----------------------------------------

def test_empty_file_is_not_a_sif(tmp_path):
    path = tmp_path / "empty.sif"
    path.write_bytes(b"")
    with pytest.raises(NotSif, match="not a SIF image"):
        read_sif(str(path))


def test_text_file_named_sif_is_not_a_sif(tmp_path):
    path = tmp_path / "notes.sif"
    path.write_text("these are my notes, not an image\n" * 20)
    with pytest.raises(NotSif, match="no SIF_MAGIC"):
        read_sif(str(path))


def test_half_copied_image_is_truncated(tmp_path):
    data = sif_bytes(labels={"a": "b"})
    path = tmp_path / "half.sif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedSif, match="truncated"):
        read_sif(str(path))


def test_image_cut_inside_the_header_or_table_is_truncated(tmp_path):
    data = sif_bytes()
    for cut in (100, 5000):
        path = tmp_path / f"cut{cut}.sif"
        path.write_bytes(data[:cut])
        with pytest.raises(TruncatedSif):
            read_sif(str(path))


def test_unknown_sif_version_is_refused(tmp_path):
    data = bytearray(sif_bytes())
    data[42:45] = b"02\0"
    path = tmp_path / "v2.sif"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedSif, match="version '02'"):
        read_sif(str(path))


def test_corrupt_descriptor_table_is_refused(tmp_path):
    data = bytearray(sif_bytes())
    struct.pack_into("<q", data, 104, 12345)   # descriptors size no longer slots x 585
    path = tmp_path / "bad.sif"
    path.write_bytes(bytes(data))
    with pytest.raises(NotSif, match="corrupt"):
        read_sif(str(path))


def test_corrupt_root_filesystem_is_reported_when_it_must_be_read(tmp_path):
    data = bytearray(sif_bytes(with_inspect_metadata=False, labels={"a": "b"}))
    path = tmp_path / "ok.sif"
    path.write_bytes(bytes(data))
    offset = sif.SifReader(str(path)).primary_partition().offset
    data[offset + 4: offset + 96] = b"\xff" * 92   # keep "hsqs", break the superblock
    path.write_bytes(bytes(data))
    with pytest.raises(SifError, match="root filesystem"):
        read_sif(str(path))


def test_missing_and_unreadable_files_raise_sif_errors(tmp_path):
    with pytest.raises(SifError, match="cannot read"):
        read_sif(str(tmp_path / "missing.sif"))
    with pytest.raises(SifError, match="cannot read"):
        read_sif(str(tmp_path))
