"""The pure-Python SIF reader, on images built here and on real ones.

Real images (built by Singularity and by the SIF reference library) are not in
this repository. Every run checks stand-ins of them instead, built here with the
same structure and metadata (tests/support/sifstandins.py); when
``PORTAL_TEST_SIF_FIXTURES`` names a folder holding the real files, every such
check runs on the real file as well (test ids ``[real]``). Other images are
built with tests/support/sifbuild.py.
"""

import hashlib
import os
import shutil
import struct
import subprocess

import pytest

from hpcportal.catalog import sif
from hpcportal.catalog.sif import NotSif, SifError, TruncatedSif, UnsupportedSif, read_sif
from support import sifstandins
from support.sifbuild import build_sif, make_squashfs, rootfs_tree, sif_bytes

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit

REAL = sifstandins.real_folder()
SOURCES = ["stand-in"] + (["real"] if REAL else [])


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    return sifstandins.build_all(str(tmp_path_factory.mktemp("standins")))


@pytest.fixture(params=SOURCES)
def image(request, standins):
    """``image(name)``: the path of the stand-in, or of the real image, ``name``."""
    def path(name):
        if request.param == "stand-in":
            return standins[name]
        real = os.path.join(REAL, name)
        assert os.path.exists(real), f"PORTAL_TEST_SIF_FIXTURES={REAL} has no {name}"
        return real
    return path


def layout(path):
    """(type, group, link) of each object: the structure siftool lists."""
    def link(value):
        if value & sif.GROUP_MASK:
            return f"group {value & ~sif.GROUP_MASK}"
        return f"object {value}" if value else None
    return [(d.type_name, d.group, link(d.link)) for d in sif.SifReader(path).descriptors]


# -- real images (or their stand-ins) ------------------------------------------

def test_busybox_built_by_singularity_3_8(image):
    path = image("busybox_amd64.sif")
    meta = read_sif(path)
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
    assert [o["name"] for o in meta["objects"]][1:3] == ["inspect-metadata.json", "oci-config.json"]
    assert layout(path) == [("deffile", 1, None), ("generic-json", 1, None),
                            ("generic-json", 1, None), ("partition", 1, None),
                            ("signature", 0, "group 1")]
    # The old (v1) library: data from 32768 on, every object page-aligned.
    reader = sif.SifReader(path)
    assert reader.header["data_offset"] == 32768
    assert all(d.offset % 4096 == 0 for d in reader.descriptors)


def test_inspecter_container_with_labels_descriptor_and_apps(image):
    path = image("inspecter_container_2019.sif")
    meta = read_sif(path)
    assert meta["labels_source"] == "labels-descriptor"
    assert meta["labels"]["e2e"] == "awsome"
    assert meta["labels"]["org.label-schema.image-arch"] == "amd64"
    assert [app["name"] for app in meta["apps"]] == ["hello", "world"]
    assert meta["apps"][0]["labels"] == {"SCIF_APP_NAME": "hello"}
    assert meta["deffile"] == {"bootstrap": "library", "from": "alpine:latest"}
    assert "e2e test container" in meta["help"]
    assert meta["created"] == "2019-09-18T19:29:33Z"
    assert meta["modified"] == "2019-09-18T19:29:41Z"   # signed 8 s after the build
    # The signature sits in group 1 and links to the partition (object 2).
    assert layout(path) == [("deffile", 1, None), ("partition", 1, None),
                            ("labels", 1, None), ("signature", 1, "object 2")]


def test_inspecter_container_without_json_metadata_reads_the_squashfs(image):
    path = image("inspecter_container_2019-06.sif")
    meta = read_sif(path)
    assert meta["labels_source"] == "squashfs"
    assert meta["labels"]["MAINTAINER"] == '"WestleyK <westley@sylabs.io>"'
    assert [app["name"] for app in meta["apps"]] == ["hello", "world"]
    assert meta["arch"] == "amd64"
    assert meta["help"].startswith("This is a e2e test container")
    assert meta["warnings"] == []
    assert layout(path) == [("deffile", 1, None), ("partition", 1, None),
                            ("signature", 1, "object 2")]


def test_reproducible_images_of_the_reference_library_have_unset_times(image):
    path = image("sylabs-empty.sif")
    meta = read_sif(path)
    assert meta["created"] == "unset"
    assert meta["sif_id"] is None
    assert meta["partition"] is None
    assert meta["objects"] == []
    assert meta["arch"] is None and meta["signed"] is False
    reader = sif.SifReader(path)
    assert reader.header["launch"] == ""
    assert reader.header["data_offset"] == reader.file_size == 4096 + 48 * 585


@pytest.mark.parametrize("name,groups", [
    ("sylabs-one-group-signed-pgp.sif", [("partition", 1, None), ("partition", 1, None),
                                         ("signature", 0, "group 1")]),
    ("sylabs-two-groups-signed-dsse.sif", [("partition", 1, None), ("partition", 1, None),
                                           ("partition", 2, None), ("signature", 0, "group 1"),
                                           ("signature", 0, "group 2")])])
def test_reference_library_partitions_and_signatures(image, name, groups):
    path = image(name)
    meta = read_sif(path)
    assert meta["arch"] == "386"
    assert meta["signed"] is True
    assert meta["partition"] == {**meta["partition"], "fs": "squashfs", "type": "primary-system",
                                 "arch": "386"}
    assert meta["created"] == "unset" and meta["warnings"] == []
    assert layout(path) == groups
    partitions = [d.partition() for d in sif.SifReader(path).find("partition")]
    assert partitions[0] == ("raw", "system", "386")
    signatures = sif.SifReader(path).find("signature")
    fingerprints = {bool(s.extra[4:24].strip(b"\0")) for s in signatures}
    # PGP signatures carry the key's fingerprint; DSSE ones do not.
    assert fingerprints == ({True} if "pgp" in name else {False})


def test_oci_sif_root_index_is_recognised(image):
    path = image("sylabs-one-object-oci-root-index.sif")
    meta = read_sif(path)
    assert meta["oci"] is True
    assert [o["type"] for o in meta["objects"]] == ["oci-root-index"]
    assert meta["labels"] == {} and meta["partition"] is None
    assert any("manifest or config not found" in w for w in meta["warnings"])
    reader = sif.SifReader(path)
    root = reader.find("oci-root-index")[0]
    # The descriptor names the digest of its own data.
    assert root.oci_digest() == "sha256:" + hashlib.sha256(reader.read(root)).hexdigest()


def test_descriptor_table_matches_siftool(tmp_path, standins):
    assert shutil.which("siftool"), "siftool is missing: run scripts/install-deps (Debian siftool)"
    paths = [build_sif(str(tmp_path / "built.sif"), labels={"a": "b"},
                       labels_descriptor={"c": "d"})] + sorted(standins.values())
    if REAL:
        paths += [os.path.join(REAL, name) for name in sorted(sifstandins.BY_NAME)]
    for path in paths:
        listing = subprocess.run(["siftool", "list", path], capture_output=True, text=True,
                                 check=True).stdout
        rows = [[cell.strip() for cell in line.split("|")] for line in listing.splitlines()
                if line[:1].isdigit()]
        expected = [(int(r[0]), r[1], r[2].replace(" ", ""), r[3]) for r in rows]
        ours = [(d.id, str(d.group) if d.group else "NONE",
                 "NONE" if not d.link else (f"{d.link & ~sif.GROUP_MASK}(G)"
                                            if d.link & sif.GROUP_MASK else str(d.link)),
                 f"{d.offset}-{d.offset + d.size}") for d in sif.SifReader(path).descriptors]
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


# -- the work one file may cost ----------------------------------------------


def crafted_sif(path, *, slots=8, shared_objects=0, shared_size=0, squashfs=None):
    """A SIF whose ``shared_objects`` Labels descriptors all point at the same
    ``shared_size`` bytes (not JSON): each is within the per-object limit,
    together they are not. ``slots`` descriptor slots in the header."""
    from support.sifbuild import DESCRIPTOR as ENTRY, HEADER as HEAD, LABELS, PARTITION, \
        partition_extra
    squashfs = squashfs if squashfs is not None else make_squashfs(rootfs_tree())
    table_offset = 4096
    data_offset = table_offset + slots * ENTRY.size
    partition_offset = (data_offset + 4095) // 4096 * 4096
    shared_offset = partition_offset + len(squashfs)
    entries = [ENTRY.pack(PARTITION, True, 1, sif.GROUP_MASK | 1, 0, partition_offset, len(squashfs),
                          len(squashfs), 0, 0, 0, 0, bytes(128),
                          partition_extra(1, 2, "amd64").ljust(384, b"\0"))]
    for index in range(shared_objects):
        entries.append(ENTRY.pack(LABELS, True, index + 2, sif.GROUP_MASK | 1, 0, shared_offset,
                                  shared_size, shared_size, 0, 0, 0, 0, bytes(128), bytes(384)))
    table = b"".join(entries).ljust(slots * ENTRY.size, b"\0")
    header = HEAD.pack(b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0"), b"SIF_MAGIC\0",
                       b"01\0", b"02\0", bytes(16), 0, 0, slots - len(entries), slots,
                       table_offset, len(table), data_offset, 0)
    with open(path, "wb") as out:
        out.write(header.ljust(table_offset, b"\0") + table)
        out.write(bytes(partition_offset - data_offset) + squashfs)
        out.write(b"x" * shared_size)
    return path


def test_many_descriptors_pointing_at_one_object_exceed_the_per_file_budget(tmp_path):
    # 12 objects of 8 MiB: each within MAX_METADATA_OBJECT, 96 MiB together.
    path = crafted_sif(str(tmp_path / "many.sif"), slots=16, shared_objects=12,
                       shared_size=8 * 1024 * 1024)
    with pytest.raises(sif.OverBudget, match="more than 67108864 bytes"):
        read_sif(path)
    # The same layout with few objects is an ordinary image with a warning.
    path = crafted_sif(str(tmp_path / "few.sif"), slots=16, shared_objects=2,
                       shared_size=8 * 1024 * 1024)
    assert read_sif(path)["partition"]["type"] == "primary-system"


def test_a_descriptor_table_beyond_the_limit_is_refused(tmp_path):
    path = crafted_sif(str(tmp_path / "slots.sif"), slots=sif.MAX_DESCRIPTORS + 1)
    with pytest.raises(sif.OverBudget, match=f"at most {sif.MAX_DESCRIPTORS}"):
        read_sif(path)
    assert read_sif(crafted_sif(str(tmp_path / "ok.sif"), slots=sif.MAX_DESCRIPTORS))


def test_looking_inside_the_squashfs_stops_when_the_time_is_spent(tmp_path):
    # Without inspect-metadata.json every app costs unsquashfs runs; a clock
    # that moves a second per look makes the bound visible without waiting.
    apps = {f"app{i}": {"help": f"app {i}"} for i in range(30)}
    path = build_sif(str(tmp_path / "apps.sif"), apps=apps, with_inspect_metadata=False)
    ticks = iter(range(10 ** 6))
    budget = sif.WorkBudget(seconds=20, clock=lambda: next(ticks))
    with pytest.raises(sif.OverBudget, match="more than 20 seconds"):
        read_sif(path, budget=budget)
    assert len(read_sif(path)["apps"]) == 30
