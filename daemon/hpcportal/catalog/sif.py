"""Reading Apptainer/Singularity images (SIF, spec version 01) in pure Python.

No ``apptainer`` binary is needed: the header, the descriptor table and the
small data objects (definition file, ``inspect-metadata.json``, a labels
descriptor, OCI index/blobs) are read with ``struct``. Only images that lack
``inspect-metadata.json`` (built before Singularity 3.6) need a look inside the
squashfs root filesystem, for ``/.singularity.d/labels.json``,
``runscript.help`` and the SCIF apps under ``/scif/apps``. That is done with
Debian's ``unsquashfs -o <offset>`` (squashfs-tools): it is the reference
implementation of the format that wrote the partition, reads every compressor
Apptainer may use (gzip, xz, zstd, lz4, lzo) without extra Python packages,
runs in its own process under a timeout (a hostile image cannot take the
daemon down), and is needed by the test suite anyway (``mksquashfs``). It only
ever lists or prints to stdout (``-lls``/``-cat``), never extracts to disk.

``read_sif(path)`` returns a plain dict (see ``SifReader.metadata``) or raises
``SifError`` (``NotSif``, ``TruncatedSif``, ``UnsupportedSif``) with a sentence
an administrator can act on. Layout reference: shared/notes/sif-format.md.
"""

import datetime
import json
import logging
import os
import shutil
import struct
import subprocess
import time
import uuid

log = logging.getLogger("hpcportal.catalog.sif")

HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")
DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
GROUP_MASK = 0xF0000000
# The Go zero time (0001-01-01) in Unix seconds: reproducible builds store it.
GO_ZERO_TIME = -62135596800

DATA_TYPES = {
    0x4001: "deffile", 0x4002: "envvar", 0x4003: "labels", 0x4004: "partition",
    0x4005: "signature", 0x4006: "generic-json", 0x4007: "generic", 0x4008: "crypto-message",
    0x4009: "sbom", 0x400A: "oci-root-index", 0x400B: "oci-blob",
}
FS_TYPES = {1: "squashfs", 2: "ext3", 3: "immutable-object", 4: "raw",
            5: "encrypted-squashfs", 6: "gocryptfs-squashfs"}
PARTITION_TYPES = {1: "system", 2: "primary-system", 3: "data", 4: "overlay"}
ARCHES = {
    "00": None, "01": "386", "02": "amd64", "03": "arm", "04": "arm64", "05": "ppc64",
    "06": "ppc64le", "07": "mips", "08": "mipsle", "09": "mips64", "10": "mips64le",
    "11": "s390x", "12": "riscv64", "13": "loong64",
}

# Sanity limits: a valid image never comes near them, a corrupt one must not
# make us allocate gigabytes. Per object, and per file (``WorkBudget``): many
# descriptors may all point at the same large object.
MAX_DESCRIPTORS = 4096
MAX_METADATA_OBJECT = 16 * 1024 * 1024
MAX_SQUASHFS_FILE = 1024 * 1024
UNSQUASHFS_TIMEOUT = 60
MAX_BYTES_PER_FILE = 64 * 1024 * 1024
MAX_SECONDS_PER_FILE = 20

# Files read inside the squashfs when the image has no inspect-metadata.json.
SQUASHFS_FILES = (
    "/.singularity.d/labels.json",
    "/.singularity.d/runscript.help",
    "/.singularity.d/Singularity",
    "/scif/apps/*/scif/labels.json",
    "/scif/apps/*/scif/runscript.help",
    "/scif/apps/*/scif/*",
)


class SifError(Exception):
    """The file cannot be used as an image; the message says why."""


class NotSif(SifError):
    pass


class TruncatedSif(SifError):
    pass


class UnsupportedSif(SifError):
    pass


class OverBudget(SifError):
    """Reading the image's metadata would take more than one file may."""


class WorkBudget:
    """What reading one image may cost in all: bytes read and wall time."""

    def __init__(self, max_bytes=MAX_BYTES_PER_FILE, seconds=MAX_SECONDS_PER_FILE,
                 clock=time.monotonic):
        self._max_bytes, self._seconds, self._clock = max_bytes, seconds, clock
        self._bytes = 0
        self._deadline = clock() + seconds

    def spend(self, count):
        self._bytes += count
        if self._bytes > self._max_bytes:
            raise OverBudget(f"reading this image's metadata takes more than {self._max_bytes} "
                             "bytes (its objects are too many or too large)")
        self.remaining()

    def remaining(self):
        """Seconds left; OverBudget when none are."""
        left = self._deadline - self._clock()
        if left <= 0:
            raise OverBudget(f"reading this image's metadata takes more than {self._seconds} seconds")
        return left


class Descriptor:
    __slots__ = ("datatype", "used", "id", "group", "link", "offset", "size", "size_padded",
                 "created", "modified", "name", "extra")

    def __init__(self, raw):
        (self.datatype, self.used, self.id, group, self.link, self.offset, self.size,
         self.size_padded, self.created, self.modified, _uid, _gid, name, self.extra) = \
            DESCRIPTOR.unpack(raw)
        self.group = group & ~GROUP_MASK if group & GROUP_MASK else group
        self.name = name.split(b"\0", 1)[0].decode("utf-8", "replace")

    @property
    def type_name(self):
        return DATA_TYPES.get(self.datatype, f"unknown-{self.datatype:#x}")

    def partition(self):
        """(fs type, partition type, arch) of a partition descriptor."""
        fstype, parttype = struct.unpack_from("<ii", self.extra)
        return (FS_TYPES.get(fstype, f"unknown-{fstype}"),
                PARTITION_TYPES.get(parttype, f"unknown-{parttype}"),
                _arch(self.extra[8:11]))

    def oci_digest(self):
        return self.extra.split(b"\0", 1)[0].decode("ascii", "replace")


def _arch(raw):
    code = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return ARCHES.get(code, f"unknown-{code}" if code else None)


def _timestamp(seconds):
    """ISO 8601 in UTC, or "unset" for reproducible builds (Go zero time, 0)."""
    if seconds in (GO_ZERO_TIME, 0):
        return "unset"
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "unset"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def deffile_summary(text):
    """Bootstrap agent and base (``From:``) of the final build stage."""
    if not text:
        return None
    summary, in_section = {}, False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("%"):
            in_section = True
            continue
        key, sep, value = stripped.partition(":")
        key = key.strip().lower()
        if not sep or " " in key:
            continue
        if key == "bootstrap":
            # A new build stage starts; the last stage is the image itself.
            summary, in_section = {"bootstrap": value.strip()}, False
        elif not in_section and key in ("from", "stage") and "bootstrap" in summary:
            summary.setdefault(key, value.strip())
    return summary or None


def _string_map(value):
    if not isinstance(value, dict):
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


class SifReader:
    """One image file: ``header``, ``descriptors`` and ``metadata()``."""

    def __init__(self, path, unsquashfs=None, run=subprocess.run, budget=None):
        self.path = path
        self._unsquashfs = unsquashfs
        self._run = run
        self._budget = budget or WorkBudget()
        self.warnings = []
        with open(path, "rb") as handle:
            self.file_size = os.fstat(handle.fileno()).st_size
            self._read_header(handle)
            self._read_descriptors(handle)

    # -- structure -----------------------------------------------------------

    def _read_header(self, handle):
        raw = handle.read(HEADER.size)
        if len(raw) < 42:
            raise NotSif(f"not a SIF image: only {len(raw)} bytes long")
        if raw[32:42] != MAGIC:
            raise NotSif("not a SIF image: no SIF_MAGIC at offset 32")
        if len(raw) < HEADER.size:
            raise TruncatedSif(f"truncated SIF image: the header needs {HEADER.size} bytes, "
                               f"the file has {len(raw)}")
        (launch, _magic, version, arch, image_id, created, modified, _free, total,
         descr_offset, descr_size, data_offset, data_size) = HEADER.unpack(raw)
        if version != VERSION:
            shown = version.split(b"\0", 1)[0].decode("ascii", "replace")
            raise UnsupportedSif(f"unsupported SIF version {shown!r} (only 01 is supported)")
        if total < 0 or descr_size != total * DESCRIPTOR.size:
            raise NotSif(f"corrupt SIF header: {total} descriptors in {descr_size} bytes")
        if total > MAX_DESCRIPTORS:
            raise OverBudget(f"the image has {total} descriptor slots; at most {MAX_DESCRIPTORS} "
                             "are read")
        if descr_offset < HEADER.size or descr_offset + descr_size > self.file_size:
            raise TruncatedSif(
                f"truncated SIF image: the descriptor table ends at byte {descr_offset + descr_size}"
                f" but the file has {self.file_size} bytes")
        # The header's data size is not checked: every object is checked against
        # the file size below, and writers that delete objects may leave it stale.
        self.header = {
            "launch": launch.split(b"\0", 1)[0].decode("utf-8", "replace"),
            "arch": _arch(arch),
            "id": None if image_id == bytes(16) else str(uuid.UUID(bytes=image_id)),
            "created": created,
            "modified": modified,
            "descriptors_total": total,
            "descriptors_offset": descr_offset,
            "data_offset": data_offset,
            "data_size": data_size,
        }

    def _read_descriptors(self, handle):
        handle.seek(self.header["descriptors_offset"])
        table = handle.read(self.header["descriptors_total"] * DESCRIPTOR.size)
        self.descriptors = []
        for index in range(self.header["descriptors_total"]):
            descriptor = Descriptor(table[index * DESCRIPTOR.size:(index + 1) * DESCRIPTOR.size])
            if not descriptor.used:
                continue  # free slots may sit anywhere in the table
            if descriptor.offset < 0 or descriptor.size < 0:
                raise NotSif(f"corrupt SIF descriptor {descriptor.id}: negative offset or size")
            if descriptor.offset + descriptor.size > self.file_size:
                raise TruncatedSif(
                    f"truncated SIF image: object {descriptor.id} ({descriptor.type_name}) ends at "
                    f"byte {descriptor.offset + descriptor.size} but the file has "
                    f"{self.file_size} bytes")
            self.descriptors.append(descriptor)

    def find(self, type_name, name=None):
        return [d for d in self.descriptors
                if d.type_name == type_name and (name is None or d.name == name)]

    def read(self, descriptor, limit=MAX_METADATA_OBJECT):
        if descriptor.size > limit:
            raise SifError(f"object {descriptor.id} is larger than {limit} bytes")
        self._budget.spend(descriptor.size)
        with open(self.path, "rb") as handle:
            handle.seek(descriptor.offset)
            data = handle.read(descriptor.size)
        if len(data) != descriptor.size:
            raise TruncatedSif(f"truncated SIF image: object {descriptor.id} is cut short")
        return data

    def _json(self, descriptor, what):
        try:
            return json.loads(self.read(descriptor).decode("utf-8"))
        except OverBudget:
            raise
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, SifError) as exc:
            self.warnings.append(f"{what} is not readable JSON: {exc}")
            return None

    def primary_partition(self):
        partitions = self.find("partition")
        for descriptor in partitions:
            if descriptor.partition()[1] == "primary-system":
                return descriptor
        for descriptor in partitions:
            if descriptor.partition()[1] == "system":
                return descriptor
        return partitions[0] if partitions else None

    # -- metadata ------------------------------------------------------------

    def metadata(self):
        """Everything the catalog shows about this image, as a JSON-able dict."""
        header = self.header
        partition = self.primary_partition()
        part_info = None
        if partition is not None:
            fs, parttype, part_arch = partition.partition()
            part_info = {"fs": fs, "type": parttype, "arch": part_arch,
                         "offset": partition.offset, "size": partition.size}
        arch = header["arch"] or (part_info or {}).get("arch")

        inspect = None
        for descriptor in self.find("generic-json", "inspect-metadata.json"):
            document = self._json(descriptor, "inspect-metadata.json")
            if isinstance(document, dict):
                inspect = (document.get("data") or {}).get("attributes") or {}
                break
        labels, labels_source = None, None
        apps, help_text, deffile_text = None, None, None
        if inspect is not None:
            if isinstance(inspect.get("labels"), dict):
                labels, labels_source = _string_map(inspect["labels"]), "inspect-metadata"
            apps = _apps_from_inspect(inspect.get("apps"))
            help_text = inspect.get("helpfile") or None
            deffile_text = inspect.get("deffile") or None
        deffiles = self.find("deffile")
        if deffiles and not deffile_text:
            try:
                deffile_text = self.read(deffiles[0]).decode("utf-8", "replace")
            except OverBudget:
                raise
            except SifError as exc:
                self.warnings.append(f"definition file not readable: {exc}")
        if labels is None:
            for descriptor in self.find("labels"):
                found = _string_map(self._json(descriptor, "the labels object"))
                if found is not None:
                    labels, labels_source = found, "labels-descriptor"
                    break
        oci_labels = self._oci_labels()
        if labels is None and oci_labels is not None:
            labels, labels_source = oci_labels, "oci-config"

        if inspect is None and part_info and part_info["fs"] == "squashfs":
            inside = self._squashfs_metadata(partition, need_deffile=not (deffile_text or deffiles))
            if inside is not None:
                if labels is None and inside["labels"] is not None:
                    labels, labels_source = inside["labels"], "squashfs"
                apps = inside["apps"]
                help_text = help_text or inside["help"]
                deffile_text = deffile_text or inside["deffile"]
        elif part_info and part_info["fs"] in ("encrypted-squashfs", "gocryptfs-squashfs"):
            self.warnings.append("the root filesystem is encrypted: labels and apps inside it "
                                 "cannot be read")

        summary = deffile_summary(deffile_text)
        if summary is None and labels:
            bootstrap = labels.get("org.label-schema.usage.singularity.deffile.bootstrap")
            base = labels.get("org.label-schema.usage.singularity.deffile.from")
            if bootstrap:
                summary = {"bootstrap": bootstrap, **({"from": base} if base else {})}
        return {
            "sif_id": header["id"],
            "arch": arch,
            "created": _timestamp(header["created"]),
            "modified": _timestamp(header["modified"]),
            "labels": labels or {},
            "labels_source": labels_source,
            "deffile": summary,
            "apps": apps or [],
            "help": help_text.strip() if isinstance(help_text, str) and help_text.strip() else None,
            "partition": part_info,
            "signed": bool(self.find("signature")),
            "encrypted": bool(part_info and part_info["fs"] in ("encrypted-squashfs",
                                                                 "gocryptfs-squashfs")),
            "oci": bool(self.find("oci-root-index")),
            "objects": [{"id": d.id, "type": d.type_name, "name": d.name, "size": d.size}
                        for d in self.descriptors],
            "warnings": list(self.warnings),
        }

    def _oci_labels(self):
        """Labels of an OCI-SIF: root index -> manifest -> config blob -> config.Labels."""
        roots = self.find("oci-root-index")
        if not roots:
            return None
        index = self._json(roots[0], "the OCI root index")
        blobs = {d.oci_digest(): d for d in self.find("oci-blob")}
        try:
            manifest = self._json(blobs[index["manifests"][0]["digest"]], "the OCI manifest")
            config = self._json(blobs[manifest["config"]["digest"]], "the OCI config")
            return _string_map((config.get("config") or {}).get("Labels") or {})
        except (KeyError, IndexError, TypeError, AttributeError):
            self.warnings.append("OCI image: manifest or config not found in the image")
            return None

    # -- inside the squashfs -----------------------------------------------

    def _squashfs_metadata(self, partition, need_deffile=True):
        with open(self.path, "rb") as handle:
            handle.seek(partition.offset)
            if handle.read(4) != b"hsqs":
                self.warnings.append("the root filesystem partition is not a squashfs image")
                return None
        binary = shutil.which(self._unsquashfs or "unsquashfs")
        if not binary:
            _warn_once("unsquashfs (Debian package squashfs-tools) is not installed: "
                       "labels and apps of images without inspect-metadata.json are not read")
            self.warnings.append("unsquashfs is not installed: labels and apps inside the image "
                                 "were not read")
            return None
        try:
            files = self._list(binary, partition.offset)
        except OverBudget:
            raise
        except SifError as exc:
            raise SifError(f"the root filesystem (squashfs) is not readable: {exc}") from None

        def cat(inner):
            size = files.get(inner)
            if size is None or size > MAX_SQUASHFS_FILE:
                return None
            return self._cat(binary, partition.offset, inner)

        labels = None
        text = cat("/.singularity.d/labels.json")
        if text is not None:
            try:
                labels = _string_map(json.loads(text))
            except json.JSONDecodeError as exc:
                self.warnings.append(f"/.singularity.d/labels.json is not valid JSON: {exc}")
        app_names = sorted({p.split("/")[3] for p in files
                            if p.startswith("/scif/apps/") and p.count("/") >= 5
                            and p.split("/")[4] == "scif"})
        apps = []
        for name in app_names:
            app = {"name": name}
            help_text = cat(f"/scif/apps/{name}/scif/runscript.help")
            if help_text and help_text.strip():
                app["help"] = help_text.strip()
            app_labels = cat(f"/scif/apps/{name}/scif/labels.json")
            if app_labels:
                try:
                    found = _string_map(json.loads(app_labels))
                    if found:
                        app["labels"] = found
                except json.JSONDecodeError:
                    self.warnings.append(f"labels of app {name} are not valid JSON")
            apps.append(app)
        return {"labels": labels, "apps": apps, "help": cat("/.singularity.d/runscript.help"),
                "deffile": cat("/.singularity.d/Singularity") if need_deffile else None}

    def _unsquashfs_run(self, args):
        left = self._budget.remaining()
        try:
            done = self._run(args, capture_output=True, timeout=min(UNSQUASHFS_TIMEOUT, left),
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
        except subprocess.TimeoutExpired:
            self._budget.remaining()
            raise SifError("unsquashfs took too long") from None
        except OSError as exc:
            raise SifError(f"cannot run unsquashfs: {exc.strerror}") from None
        return done

    def _list(self, binary, offset):
        """{path: size} of the regular files among SQUASHFS_FILES."""
        done = self._unsquashfs_run([binary, "-o", str(offset), "-d", "", "-lls", "-no-progress",
                                     self.path, *SQUASHFS_FILES])
        if done.returncode != 0 and not done.stdout:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SifError(message[-1] if message else f"unsquashfs failed ({done.returncode})")
        files = {}
        for line in done.stdout.decode("utf-8", "surrogateescape").splitlines():
            # "-rw-r--r-- root/root   325 2019-03-26 18:59 /.singularity.d/labels.json"
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[0].startswith("-") and fields[2].isdigit():
                files[fields[5]] = int(fields[2])
            elif len(fields) == 6 and fields[0].startswith("d"):
                files.setdefault(fields[5] + "/", 0)
        return files

    def _cat(self, binary, offset, inner):
        done = self._unsquashfs_run([binary, "-o", str(offset), "-cat", self.path, inner])
        if done.returncode != 0:
            return None
        self._budget.spend(min(len(done.stdout), MAX_SQUASHFS_FILE))
        return done.stdout[:MAX_SQUASHFS_FILE].decode("utf-8", "replace")


def _apps_from_inspect(apps):
    if not isinstance(apps, dict):
        return []
    out = []
    for name in sorted(apps):
        attributes = apps[name] if isinstance(apps[name], dict) else {}
        app = {"name": str(name)}
        help_text = attributes.get("helpfile") or attributes.get("help")
        if isinstance(help_text, str) and help_text.strip():
            app["help"] = help_text.strip()
        labels = _string_map(attributes.get("labels"))
        if labels:
            app["labels"] = labels
        out.append(app)
    return out


_warned = set()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def read_sif(path, unsquashfs=None, run=subprocess.run, budget=None):
    """Metadata of the image at ``path``; raises ``SifError`` when it is not usable.

    ``OSError`` (missing, unreadable) is raised as ``SifError`` too, with the
    system's reason. ``budget`` (a ``WorkBudget``) bounds the whole file's work.
    """
    try:
        return SifReader(path, unsquashfs=unsquashfs, run=run, budget=budget).metadata()
    except OSError as exc:
        raise SifError(f"cannot read the file: {exc.strerror or exc}") from None
