"""What kind of file an upload is: by content first, then by name.

Content is judged by libmagic (through python-magic; ``libmagic1`` is
installed by ``scripts/install-deps``): it is the detector ``file(1)`` uses,
maintained for decades, and knows HDF5, NetCDF, CSV, the archive formats,
shell and Python scripts and text encodings — more than the pure-Python
detectors, which only know binary signatures and cannot tell text kinds
apart. A few formats HPC users upload and libmagic does not name (SIF
images, mesh formats) are recognised here by their signatures and names.
Without libmagic the name and a few signatures still give an answer.
"""

import logging
import mimetypes

log = logging.getLogger(__name__)

SAMPLE_BYTES = 64 * 1024
SIF_MAGIC = b"SIF_MAGIC"

ARCHIVE_MIMES = {
    "application/zip", "application/x-tar", "application/gzip", "application/x-gzip",
    "application/x-bzip2", "application/x-xz", "application/zstd", "application/x-zstd",
    "application/x-7z-compressed", "application/x-rar", "application/vnd.rar",
    "application/x-rar-compressed", "application/x-lzma", "application/x-compress",
    "application/java-archive", "application/x-lz4", "application/x-cpio",
}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".tbz2", ".xz", ".txz",
                    ".zst", ".tzst", ".7z", ".rar", ".lz4", ".cpio")
MESH_SUFFIXES = (".msh", ".stl", ".obj", ".vtk", ".vtu", ".vtp", ".vtm", ".pvtu", ".unv",
                 ".cgns", ".exo", ".e", ".med", ".ply", ".off", ".mesh", ".inp", ".cas",
                 ".neu", ".step", ".stp", ".iges", ".igs", ".geo", ".foam")
MESH_SIGNATURES = (b"$MeshFormat", b"# vtk DataFile", b"ply\n")
DATA_MIMES = {"application/x-hdf5", "application/x-hdf", "application/x-netcdf", "text/csv",
              "application/vnd.apache.parquet", "application/x-matlab-data", "application/fits",
              "image/fits", "text/tab-separated-values"}
DATA_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nc", ".nc4", ".cdf", ".csv", ".tsv", ".npy",
                 ".npz", ".parquet", ".fits", ".fit", ".mat", ".feather", ".arrow", ".grib",
                 ".grb", ".grib2", ".sav", ".dat")
DATA_SIGNATURES = (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"\x93NUMPY", b"PAR1",
                   b"SIMPLE  =")
SCRIPT_MIMES = {"text/x-shellscript", "text/x-python", "text/x-script.python", "text/x-perl",
                "text/x-ruby", "text/x-tcl", "text/x-lua", "text/x-r", "application/x-sh"}
SCRIPT_SUFFIXES = (".sh", ".bash", ".zsh", ".csh", ".tcsh", ".ksh", ".py", ".slurm", ".sbatch",
                   ".r", ".jl", ".pl", ".rb", ".tcl", ".lua", ".m")
TEXT_MIMES = {"application/json", "application/xml", "application/x-yaml", "application/yaml",
              "application/javascript", "application/x-ndjson"}


class Classifier:
    """``classify(sample, filename) -> (file_type, mime_type)``."""

    def __init__(self, use_libmagic=True):
        self._magic = None
        if use_libmagic:
            try:
                import magic
                # python-magic serialises calls on one Magic object with a lock.
                self._magic = magic.Magic(mime=True)
            except (ImportError, OSError) as exc:  # python-magic or libmagic1 missing
                log.warning("libmagic is not available (%s); classifying by name only", exc)

    @property
    def uses_libmagic(self):
        return self._magic is not None

    def mime_of(self, sample, filename):
        if self._magic is not None and sample:
            try:
                return self._magic.from_buffer(sample)
            except Exception as exc:  # libmagic may fail on odd input; the name still helps
                log.warning("libmagic failed on %r: %s", filename, exc)
        guessed, _ = mimetypes.guess_type(filename, strict=False)
        if guessed:
            return guessed
        if not sample:
            return "application/x-empty"
        return "text/plain" if looks_like_text(sample) else "application/octet-stream"

    def classify(self, sample, filename):
        lower = filename.lower()
        mime = self.mime_of(sample, filename)
        if sample[32:32 + len(SIF_MAGIC)] == SIF_MAGIC:
            return "sif", "application/x-apptainer-sif"
        if mime in ARCHIVE_MIMES or (lower.endswith(ARCHIVE_SUFFIXES) and not _texty(mime)):
            return "archive", mime
        if sample.startswith(MESH_SIGNATURES) or lower.endswith(MESH_SUFFIXES):
            return "mesh", mime
        if (mime in DATA_MIMES or sample.startswith(DATA_SIGNATURES)
                or lower.endswith(DATA_SUFFIXES)):
            return "data", mime
        if (mime in SCRIPT_MIMES or lower.endswith(SCRIPT_SUFFIXES)
                or (sample.startswith(b"#!") and looks_like_text(sample))):
            return "script", mime
        if _texty(mime) or (mime == "application/octet-stream" and looks_like_text(sample)):
            return "text", mime
        return "binary", mime


def _texty(mime):
    return mime.startswith("text/") or mime in TEXT_MIMES


def looks_like_text(sample):
    """UTF-8 (a multi-byte character may be cut at the end) without NUL bytes."""
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data"
