"""Stand-ins for real SIF images, built here so that every machine tests them.

Each builder writes a file with the structure and metadata of one real image
(built by Singularity, or by the SIF reference library's test suite), as
``siftool list`` and our reader see them: the same objects in the same order,
groups, links, alignment and data offset, the same header ID, times and arch,
and the labels, help, apps and definition file in the same places. Only the
bulk bytes differ (a small squashfs, made-up signature blocks: nothing verifies
them). ``REAL_NAMES`` maps each builder to the file name of the real image; the
tests check the real files too when ``PORTAL_TEST_SIF_FIXTURES`` names a folder
holding them.
"""

import base64
import hashlib
import json
import os
import struct
import uuid

from support.sifbuild import (DEFFILE, GENERIC_JSON, GO_ZERO_TIME, LABELS, OCI_ROOT_INDEX,
                              PARTITION, SIGNATURE, SifObject, group_link, make_squashfs,
                              partition_extra, rootfs_tree, write_sif)

# Old (v1) library: data after 32768 and every object page-aligned.
V1_DATA_OFFSET = 32768
PAGE = 4096
SHA256, SHA384 = 1, 2
SQUASHFS, EXT3, RAW = 1, 2, 4
SYSTEM, PRIMARY_SYSTEM = 1, 2


def signature_extra(hash_type, fingerprint=b""):
    """Hash type, then the 20-byte PGP fingerprint (zeros for DSSE)."""
    return struct.pack("<i", hash_type) + fingerprint.ljust(20, b"\0")


def pgp_clearsigned(text):
    """A PGP clear-signed block around ``text``, shaped like gpg's; the signature
    itself is filler (readers only note that the image is signed)."""
    filler = base64.b64encode(hashlib.sha512(text.encode()).digest() * 8).decode()
    lines = [filler[i:i + 64] for i in range(0, len(filler), 64)]
    return ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + text
            + "\n-----BEGIN PGP SIGNATURE-----\n\n" + "\n".join(lines)
            + "\n-----END PGP SIGNATURE-----\n").encode()


def dsse_envelope(payload):
    return json.dumps({
        "payloadType": "application/vnd.sylabs.sif-metadata+json",
        "payload": base64.b64encode(payload.encode()).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(
            hashlib.sha512(payload.encode()).digest()).decode()}],
    }, separators=(",", ":")).encode()


def _integrity_metadata(objects):
    """The JSON sylabs/sif's integrity package signs: digests of a group's objects."""
    return json.dumps({"version": 1, "header": {"digest": "sha256:" + "0" * 64}, "objects": [
        {"relativeId": i, "descriptorDigest": "sha256:" + hashlib.sha256(b"d%d" % i).hexdigest(),
         "objectDigest": "sha256:" + hashlib.sha256(data).hexdigest()}
        for i, data in enumerate(objects)]}, separators=(",", ":"))


# -- built by Singularity ----------------------------------------------------

BUSYBOX_LABELS = {
    "org.label-schema.build-arch": "amd64",
    "org.label-schema.build-date": "Monday_2_August_2021_14:9:36_CDT",
    "org.label-schema.schema-version": "1.0",
    "org.label-schema.usage.singularity.deffile.bootstrap": "docker",
    "org.label-schema.usage.singularity.deffile.from": "busybox:1.33.1",
    "org.label-schema.usage.singularity.version": "3.8.1",
}


def busybox_amd64(path):
    """Singularity 3.8.1 ``build busybox.sif docker://busybox:1.33.1``, then ``sign``:
    Deffile, inspect-metadata.json, oci-config.json, squashfs, a PGP signature of
    group 1 (itself in no group); data offset 32768, objects page-aligned."""
    deffile = "BootStrap: docker\nFrom: busybox:1.33.1\n"
    inspect = {"data": {"attributes": {
        "environment": {"/.singularity.d/env/90-environment.sh":
                        "#!/bin/sh\n# Custom environment shell code should follow"},
        "labels": BUSYBOX_LABELS, "runscript": "#!/bin/sh\nexec sh \"$@\"",
        "deffile": deffile.rstrip("\n"), "startscript": "#!/bin/sh"}}, "type": "container"}
    oci_config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                  "Cmd": ["sh"]}
    squashfs = make_squashfs(rootfs_tree(labels=BUSYBOX_LABELS, deffile=deffile))
    group = [deffile.encode(), json.dumps(inspect, separators=(",", ":")).encode(),
             json.dumps(oci_config, separators=(",", ":")).encode(), squashfs]
    objects = [
        SifObject(DEFFILE, group[0], name=".", align=PAGE),
        SifObject(GENERIC_JSON, group[1], name="inspect-metadata.json", align=PAGE),
        SifObject(GENERIC_JSON, group[2], name="oci-config.json", align=PAGE),
        SifObject(PARTITION, squashfs, name="squashfs-275937245", align=PAGE,
                  extra=partition_extra(SQUASHFS, PRIMARY_SYSTEM, "amd64")),
        SifObject(SIGNATURE, pgp_clearsigned(_integrity_metadata(group)), name=".", group=0,
                  link=group_link(1), align=PAGE,
                  extra=signature_extra(SHA256, bytes.fromhex("1137e72e6816bfc06d9caa0d15f3f4f4f14b03b2"))),
    ]
    return write_sif(path, objects, arch="amd64", data_offset=V1_DATA_OFFSET,
                     image_id=uuid.UUID("4f307b4c-58a8-4753-9c0f-21dceefed4a6").bytes,
                     created=1627931376)


INSPECTER_DEFFILE = """bootstrap: library
from: alpine:latest

%help
This is a e2e test container used for testing the 'inspect'
command. This container "inspector_container.sif" should be placed
in the "e2e/testdata" directory of Singularity.

%labels
MAINTAINER "WestleyK <westley@sylabs.io>"
e2e awsome
E2E AWSOME
hi "hello world"
HI "HELLO WORLD"

%runscript
cat /.singularity.d/runscript.help

%apprun hello
echo "hello"

%apprun world
echo "world"
"""
INSPECTER_HELP = INSPECTER_DEFFILE.split("%help\n", 1)[1].split("\n\n", 1)[0] + "\n"
INSPECTER_LABELS = {
    "E2E": "AWSOME", "HI": '"HELLO WORLD"', "MAINTAINER": '"WestleyK <westley@sylabs.io>"',
    "e2e": "awsome", "hi": '"hello world"',
    "org.label-schema.schema-version": "1.0",
    "org.label-schema.usage": "/.singularity.d/runscript.help",
    "org.label-schema.usage.singularity.deffile.bootstrap": "library",
    "org.label-schema.usage.singularity.deffile.from": "alpine:latest",
    "org.label-schema.usage.singularity.runscript.help": "/.singularity.d/runscript.help",
}
INSPECTER_2019_LABELS = {**INSPECTER_LABELS,
                         "org.label-schema.build-date": "Wednesday_18_September_2019_12:29:33_PDT",
                         "org.label-schema.image-arch": "amd64",
                         "org.label-schema.image-size": "2.56 MB",
                         "org.label-schema.usage.singularity.version": "3.4.0-211.g6a5f555c9"}
INSPECTER_2019_06_LABELS = {**INSPECTER_LABELS,
                            "org.label-schema.build-date": "Friday_14_June_2019_16:49:57_PDT",
                            "org.label-schema.usage.singularity.version": "3.2.1-660.g4c8a84050"}


def _inspecter(path, *, labels, labels_descriptor, image_id, created, signed, partition_name):
    """Singularity 3.2/3.4 (2019): no JSON metadata, so labels, help and the SCIF
    apps ``hello`` and ``world`` live in the squashfs only; a PGP SHA-384
    signature in group 1 linked to the partition (object 2), added ``signed`` s
    after the build."""
    squashfs = make_squashfs(rootfs_tree(labels=labels, apps={"hello": {}, "world": {}},
                                         help_text=INSPECTER_HELP, deffile=INSPECTER_DEFFILE))
    objects = [
        SifObject(DEFFILE, INSPECTER_DEFFILE.encode(), name=".", align=PAGE),
        SifObject(PARTITION, squashfs, name=partition_name, align=PAGE,
                  extra=partition_extra(SQUASHFS, PRIMARY_SYSTEM, "amd64")),
    ]
    if labels_descriptor is not None:
        # Added after the build (siftool add --datatype 3), as Go's json writes it.
        text = json.dumps(labels_descriptor, indent=4, sort_keys=True)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e")
        objects.append(SifObject(LABELS, text.encode(), name="image-metadata", align=PAGE))
    objects.append(SifObject(
        SIGNATURE, pgp_clearsigned("SIFHASH:\n" + hashlib.sha384(squashfs).hexdigest()),
        name="part-signature", link=2, align=PAGE, created=created + signed,
        extra=signature_extra(SHA384, hashlib.sha1(b"e2e test key").digest())))
    return write_sif(path, objects, arch="amd64", data_offset=V1_DATA_OFFSET,
                     image_id=uuid.UUID(image_id).bytes, created=created,
                     modified=created + signed)


def inspecter_container_2019(path):
    """Singularity 3.4 (September 2019), with a JSON.Labels descriptor added later."""
    return _inspecter(path, labels={"org.label-schema.schema-version": "1.0"},
                      labels_descriptor=INSPECTER_2019_LABELS,
                      image_id="8571be19-78ce-4551-b709-7cfff26b4203",
                      created=1568834973, signed=8, partition_name="squashfs-810590122")


def inspecter_container_2019_06(path):
    """Singularity 3.2 (June 2019): no labels descriptor either."""
    return _inspecter(path, labels=INSPECTER_2019_06_LABELS, labels_descriptor=None,
                      image_id="13172b41-ea7b-4c01-9291-2e602995a6b0",
                      created=1560556197, signed=12, partition_name="squashfs-548651273.img")


# -- the SIF reference library's test images (github.com/sylabs/sif) ---------
# Reproducible: no launch script, nil ID, Go zero times, data offset 32176.

def sylabs_empty(path):
    return write_sif(path, [], launch=b"")


def _group_one():
    """A raw System partition and a squashfs primary partition, both 386."""
    return [SifObject(PARTITION, bytes.fromhex("facefeed"), align=PAGE,
                      extra=partition_extra(RAW, SYSTEM, "386")),
            SifObject(PARTITION, make_squashfs({"/hello.txt": "Hello, SIF world!\n"}), align=PAGE,
                      extra=partition_extra(SQUASHFS, PRIMARY_SYSTEM, "386"))]


def sylabs_one_group_signed_pgp(path):
    objects = _group_one()
    objects.append(SifObject(
        SIGNATURE, pgp_clearsigned(_integrity_metadata([o.data for o in objects])), group=0,
        link=group_link(1), extra=signature_extra(SHA256, hashlib.sha1(b"sif test key").digest())))
    return write_sif(path, objects, arch="386", launch=b"", created=GO_ZERO_TIME)


def ext3_image(size=256 * 1024):
    """An (empty) ext3 file system image: the superblock magic is enough here, no
    reader opens ext3 partitions."""
    image = bytearray(size)
    struct.pack_into("<H", image, 1024 + 56, 0xEF53)
    return bytes(image)


def sylabs_two_groups_signed_dsse(path):
    objects = _group_one()
    objects.append(SifObject(PARTITION, ext3_image(), group=2, align=PAGE,
                             extra=partition_extra(EXT3, SYSTEM, "amd64")))
    for group, members in ((1, objects[:2]), (2, objects[2:])):
        objects.append(SifObject(
            SIGNATURE, dsse_envelope(_integrity_metadata([o.data for o in members])), group=0,
            link=group_link(group), extra=signature_extra(SHA256)))
    return write_sif(path, objects, arch="386", launch=b"", created=GO_ZERO_TIME)


def sylabs_one_object_oci_root_index(path):
    """An OCI-SIF root index alone: its manifests are not in the image."""
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": "sha256:abcdef1234567890", "size": 123456,
         "platform": {"architecture": "amd64", "os": "linux"}}]}, indent=2).encode()
    digest = b"sha256:" + hashlib.sha256(index).hexdigest().encode()
    return write_sif(path, [SifObject(OCI_ROOT_INDEX, index, extra=digest)], launch=b"")


REAL_NAMES = {
    busybox_amd64: "busybox_amd64.sif",
    inspecter_container_2019: "inspecter_container_2019.sif",
    inspecter_container_2019_06: "inspecter_container_2019-06.sif",
    sylabs_empty: "sylabs-empty.sif",
    sylabs_one_group_signed_pgp: "sylabs-one-group-signed-pgp.sif",
    sylabs_two_groups_signed_dsse: "sylabs-two-groups-signed-dsse.sif",
    sylabs_one_object_oci_root_index: "sylabs-one-object-oci-root-index.sif",
}
BY_NAME = {name: builder for builder, name in REAL_NAMES.items()}


def real_folder():
    """Folder of the real images, from $PORTAL_TEST_SIF_FIXTURES (None: not given).
    Not HPCPORTAL_*: hpcportald refuses unknown variables with that prefix."""
    return os.environ.get("PORTAL_TEST_SIF_FIXTURES") or None


def build_all(folder):
    """Every stand-in, under its real image's file name, in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    return {name: builder(os.path.join(folder, name)) for name, builder in BY_NAME.items()}
