"""Building real SIF images for tests, with mksquashfs (Debian squashfs-tools).

``build_sif(path, ...)`` writes a SIF v01 file the way Apptainer lays it out
(sylabs/sif's pkg/sif, and Apptainer's SIF assembler): header, 48 descriptor slots, then a Deffile, an
optional ``inspect-metadata.json`` GenericJSON object, an optional Labels
object, and a squashfs root filesystem (primary system partition, aligned to
4096) holding ``/.singularity.d/labels.json``, ``runscript.help`` and SCIF apps
under ``/scif/apps/<app>/scif/``. ``siftool`` accepts these files.
``write_sif(path, [SifObject(...)], ...)`` writes any objects, groups and links
(tests/support/sifstandins.py builds stand-ins of real images with it).

Command line (used by scripts/demo):
``python -m tests.support.sifbuild --examples <images root>``.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid

HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")
DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
SLOTS = 48
DESCRIPTORS_OFFSET = 4096
DATA_OFFSET = DESCRIPTORS_OFFSET + SLOTS * DESCRIPTOR.size
GO_ZERO_TIME = -62135596800
GROUP_MASK = 0xF0000000
ARCH_CODES = {"386": "01", "amd64": "02", "arm": "03", "arm64": "04", "ppc64": "05",
              "ppc64le": "06", "s390x": "11", "riscv64": "12", None: "00"}
LAUNCH = b"#!/usr/bin/env run-singularity\n"

DEFFILE, LABELS, PARTITION, SIGNATURE, GENERIC_JSON = 0x4001, 0x4003, 0x4004, 0x4005, 0x4006
OCI_ROOT_INDEX = 0x400A


def make_squashfs(tree, compression="gzip"):
    """Bytes of a squashfs image of ``tree``: {"/path/in/image": str|bytes}."""
    if not shutil.which("mksquashfs"):
        raise RuntimeError("mksquashfs is missing: run scripts/install-deps (squashfs-tools)")
    with tempfile.TemporaryDirectory(prefix="sifbuild-") as work:
        root = os.path.join(work, "root")
        os.makedirs(root)
        for inner, content in tree.items():
            target = os.path.join(root, inner.lstrip("/"))
            if inner.endswith("/"):
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(content.encode() if isinstance(content, str) else content)
        out = os.path.join(work, "rootfs.sqfs")
        subprocess.run(["mksquashfs", root, out, "-noappend", "-quiet", "-no-progress",
                        "-all-root", "-no-xattrs", "-comp", compression],
                       check=True, stdout=subprocess.DEVNULL)
        with open(out, "rb") as handle:
            return handle.read()


def rootfs_tree(labels=None, apps=None, help_text=None, deffile=None):
    """The files Apptainer writes into a container's root filesystem."""
    tree = {"/.singularity.d/env/90-environment.sh": "#!/bin/sh\n",
            "/.singularity.d/runscript": "#!/bin/sh\nexec \"$@\"\n",
            "/bin/": None}
    if labels is not None:
        tree["/.singularity.d/labels.json"] = json.dumps(labels, indent="\t")
    if help_text:
        tree["/.singularity.d/runscript.help"] = help_text
    if deffile:
        tree["/.singularity.d/Singularity"] = deffile
    for name, app in (apps or {}).items():
        base = f"/scif/apps/{name}/scif"
        tree[f"{base}/runscript"] = f"#!/bin/sh\necho {name}\n"
        tree[f"{base}/env/01-base.sh"] = f"SCIF_APPNAME={name}\n"
        tree[f"/scif/apps/{name}/bin/"] = None
        app_labels = {"SCIF_APP_NAME": name, **(app.get("labels") or {})}
        tree[f"{base}/labels.json"] = json.dumps(app_labels, indent="\t")
        if app.get("help"):
            tree[f"{base}/runscript.help"] = app["help"]
    return tree


def inspect_metadata(labels=None, apps=None, help_text=None, deffile=None):
    attributes = {}
    if labels:
        attributes["labels"] = labels
    if deffile:
        attributes["deffile"] = deffile.rstrip("\n")
    if help_text:
        attributes["helpfile"] = help_text
    if apps:
        attributes["apps"] = {
            name: {k: v for k, v in (("labels", app.get("labels")), ("helpfile", app.get("help")),
                                     ("runscript", f"echo {name}")) if v}
            for name, app in apps.items()}
    return {"type": "container", "data": {"attributes": attributes}}


def build_sif(path, *, labels=None, apps=None, help_text=None,
              deffile="Bootstrap: docker\nFrom: python:3.11-slim\n", arch="amd64",
              with_inspect_metadata=True, labels_descriptor=None, squashfs=None,
              deterministic=False, created=None, image_id=None, partition_type=2,
              deffile_descriptor=True, fs_type=1):
    """Write a SIF file at ``path`` and return its path.

    ``apps``: {name: {"help": str, "labels": {...}}}. ``with_inspect_metadata``
    writes the JSON Apptainer >= 3.6 adds; without it readers must look inside
    the squashfs. ``labels_descriptor``: a dict for a JSON.Labels object.
    ``squashfs``: ready bytes (reuse one for many files), else built here.
    ``deffile_descriptor=False`` leaves the definition file only inside the
    squashfs (``/.singularity.d/Singularity``), as some old builders did.
    """
    labels = dict(labels or {})
    now = int(time.time()) if created is None else int(created)
    stamp = GO_ZERO_TIME if deterministic else now
    if squashfs is None:
        squashfs = make_squashfs(rootfs_tree(labels, apps, help_text, deffile))
    objects = []  # (datatype, name, data, extra, align)
    if deffile and deffile_descriptor:
        objects.append((DEFFILE, "", deffile.encode(), b"", 1))
    if with_inspect_metadata:
        meta = inspect_metadata(labels, apps, help_text, deffile)
        objects.append((GENERIC_JSON, "inspect-metadata.json",
                        json.dumps(meta, separators=(",", ":")).encode(), b"", 1))
    if labels_descriptor is not None:
        objects.append((LABELS, "", json.dumps(labels_descriptor).encode(), b"", 1))
    if squashfs:
        objects.append((PARTITION, "", squashfs, partition_extra(fs_type, partition_type, arch),
                        4096))
    if image_id is None:
        image_id = bytes(16) if deterministic else uuid.uuid4().bytes
    return write_sif(path, [SifObject(datatype, payload, name=name, extra=extra, align=align)
                            for datatype, name, payload, extra, align in objects],
                     arch=arch if squashfs and partition_type == 2 else None,
                     image_id=image_id, created=stamp)


class SifObject:
    """One data object: ``group`` 0 is "no group"; ``link`` an object id, or
    ``group_link(n)`` for a group; ``align`` its placement (Apptainer aligns
    partitions to 4096, the old v1 library every object)."""

    def __init__(self, datatype, data, *, name="", group=1, link=0, extra=b"", align=1,
                 created=None):
        self.datatype, self.data, self.name, self.group = datatype, data, name, group
        self.link, self.extra, self.align, self.created = link, extra, align, created


def group_link(group):
    return GROUP_MASK | group


def partition_extra(fs_type, partition_type, arch):
    return struct.pack("<ii", fs_type, partition_type) + arch_code(arch)


def arch_code(arch):
    return ARCH_CODES.get(arch, "00").encode() + b"\0"


def write_sif(path, objects, *, arch=None, image_id=None, created=GO_ZERO_TIME, modified=None,
              launch=LAUNCH, data_offset=DATA_OFFSET):
    """Write ``objects`` (``SifObject``) as a SIF v01 file in the given order;
    ``image_id`` 16 bytes (None: nil, as reproducible builds store)."""
    modified = created if modified is None else modified
    descriptors = []
    data = bytearray()
    position = data_offset
    for index, item in enumerate(objects):
        gap = (-position) % item.align
        data += bytes(gap)
        offset = position + gap
        stamp = created if item.created is None else item.created
        descriptors.append(DESCRIPTOR.pack(
            item.datatype, True, index + 1, GROUP_MASK | item.group, item.link, offset,
            len(item.data), len(item.data) + gap, stamp, stamp, 0, 0,
            item.name.encode().ljust(128, b"\0"), item.extra.ljust(384, b"\0")))
        data += item.data
        position = offset + len(item.data)
    table = b"".join(descriptors) + bytes(DESCRIPTOR.size * (SLOTS - len(descriptors)))
    header = HEADER.pack(launch.ljust(32, b"\0"), b"SIF_MAGIC\0", b"01\0", arch_code(arch),
                         image_id or bytes(16), created, modified, SLOTS - len(descriptors),
                         SLOTS, DESCRIPTORS_OFFSET, SLOTS * DESCRIPTOR.size, data_offset, len(data))
    blob = header.ljust(DESCRIPTORS_OFFSET, b"\0") + table
    blob = blob.ljust(data_offset, b"\0") + bytes(data)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(blob)
    os.chmod(path, 0o755)
    return path


def sif_bytes(**kwargs):
    """The bytes of an image built like ``build_sif`` (for slow or partial copies)."""
    with tempfile.TemporaryDirectory(prefix="sifbuild-") as work:
        path = build_sif(os.path.join(work, "image.sif"), **kwargs)
        with open(path, "rb") as handle:
            return handle.read()


EXAMPLES = {
    "compute/python_3.11.sif": dict(
        labels={"org.opencontainers.image.description": "Python 3.11 with NumPy and SciPy",
                "org.opencontainers.image.version": "3.11"},
        help_text="Run python3 scripts: apptainer exec python_3.11.sif python3 script.py\n"),
    "compute/openfoam-v2312.sif": dict(
        labels={"description": "OpenFOAM v2312 CFD toolbox"},
        apps={"simpleFoam": {"help": "Steady-state incompressible solver."},
              "blockMesh": {"help": "Structured mesh generator."}},
        deffile="Bootstrap: docker\nFrom: opencfd/openfoam-default:2312\n"),
    "viz/paraview_5.11.sif": dict(
        labels={"org.opencontainers.image.description": "ParaView 5.11 for visualisation"},
        deffile="Bootstrap: docker\nFrom: kitware/paraview:5.11\n"),
}


def build_examples(images_root):
    for relpath, kwargs in EXAMPLES.items():
        path = os.path.join(images_root, relpath)
        print(build_sif(path, **kwargs))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--examples":
        build_examples(sys.argv[2])
    else:
        print("usage: python -m tests.support.sifbuild --examples IMAGES_ROOT", file=sys.stderr)
        sys.exit(2)
