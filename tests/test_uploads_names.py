"""File names, clash numbering and classification: pure functions, no daemon."""

import pytest

from hpcportal.errors import ValidationError
from hpcportal.uploads.classify import Classifier, looks_like_text
from hpcportal.uploads.names import MAX_NAME_BYTES, clean_filename, clean_job_id, numbered

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit


def test_numbered_names_keep_the_extension_and_the_length_limit():
    assert numbered("data.csv", 0) == "data.csv"
    assert numbered("data.csv", 2) == "data (2).csv"
    assert numbered(".bashrc", 1) == ".bashrc (1)"
    assert numbered("archive.tar.gz", 1) == "archive.tar (1).gz"
    long_name = "\u00e9" * 120 + ".dat"
    assert len(long_name.encode()) <= MAX_NAME_BYTES
    longer = numbered(long_name, 12)
    assert longer.endswith(" (12).dat") and len(longer.encode()) <= MAX_NAME_BYTES
    longer.encode().decode("utf-8")  # never cut inside a character


def test_clean_names():
    assert clean_filename("A\u030a.txt") == "\u00c5.txt"
    assert clean_filename("a..b") == "a..b"
    with pytest.raises(ValidationError):
        clean_filename("bad\u202ename")  # bidirectional override: a format character
    assert clean_job_id("") is None and clean_job_id("tmp-1.2_3") == "tmp-1.2_3"


def test_classification_by_content_and_name():
    classifier = Classifier()
    assert classifier.uses_libmagic
    sif = b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC\0" + b"\0" * 200
    assert classifier.classify(sif, "python.sif") == ("sif", "application/x-apptainer-sif")
    assert classifier.classify(b"$MeshFormat\n4.1 0 8\n", "cavity.msh")[0] == "mesh"
    assert classifier.classify(b"CDF\x01" + b"\0" * 100, "climate.nc")[0] == "data"
    assert classifier.classify(b"#!/usr/bin/env python3\nprint(1)\n", "run")[0] == "script"
    assert classifier.classify(b"just words\n", "notes")[0] == "text"
    assert classifier.classify(b"\0\1\2\3" * 100, "blob")[0] == "binary"


def test_classification_without_libmagic_uses_names_and_signatures():
    classifier = Classifier(use_libmagic=False)
    assert classifier.classify(b"\x89HDF\r\n\x1a\n", "x.h5")[0] == "data"
    assert classifier.classify(b"a,b\n1,2\n", "t.csv") == ("data", "text/csv")
    assert classifier.classify(b"hello\n", "readme")[0] == "text"


def test_text_detection_tolerates_a_cut_character():
    assert looks_like_text("caf\u00e9".encode()[:-1])
    assert not looks_like_text(b"a\0b")
