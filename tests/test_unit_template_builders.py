"""The pure parts of users' templates: ids from names, job files as slots, the YAML written."""

import pytest
import yaml

from hpcportal.catalog import templates as tpl
from hpcportal.catalog.my_templates import local_id_from_name, to_yaml
from hpcportal.jobs.as_template import build_document, file_slot, script_without_directives

pytestmark = pytest.mark.unit


def test_local_ids_from_display_names():
    assert local_id_from_name("My Run 1") == "my-run-1"
    assert local_id_from_name("결과 분석") == "template"
    assert local_id_from_name("OpenFOAM 결과 v2") == "openfoam-v2"


def test_input_files_become_named_slots_with_their_kind():
    taken = set()
    slots = [file_slot(path, taken) for path in
             ("/u/결과 파일.csv", "/u/case.tar.gz", "/u/2024 data.CSV", "/u/README", "/u/case.tgz", "/u/결과.csv")]
    assert [(s["name"], s["label"], s.get("patterns")) for s in slots] == [
        ("file_1", "결과 파일.csv", ["*.csv"]), ("case", "case.tar.gz", ["*.tar.gz"]),
        ("file_2024_data", "2024 data.CSV", ["*.csv"]), ("readme", "README", None),
        ("case_1", "case.tgz", ["*.tgz"]), ("file_2", "결과.csv", ["*.csv"])]


def test_sbatch_lines_leave_the_script_and_nothing_else_does():
    script = "#!/bin/bash\n#SBATCH --time=5\n  # SBATCH --mem=1G\necho '#SBATCH stays'\nprintf end"
    assert script_without_directives(script) == "#!/bin/bash\necho '#SBATCH stays'\nprintf end"


def test_a_plain_job_makes_a_valid_template_whose_yaml_reads_back_the_same():
    job = {"jobId": "42", "name": "결과 분석 run", "partition": "compute", "submitted_at": "2026-01-01T00:00:00Z",
           "resources": {"nodes": 2, "cpus": 4, "memory": "1G", "time": "UNLIMITED", "gpus": None},
           "image": {"id": "python_3.11"}, "files": ["/u/결과 파일.csv"], "parameters": None, "template": None}
    document = build_document(job, "#!/bin/bash\n#SBATCH -N 2\ncat \"$INPUT_FILE_0\"  \n")
    assert document["slurm"] == {"partition": "compute", "nodes": 2, "cpus": 4, "memory": "1G"}
    assert document["apptainer"] == {"image": "python_3.11"}
    text = to_yaml(document)
    assert yaml.safe_load(text) == document
    parsed = tpl.parse_template(text, "users/alice/x.yaml")
    assert parsed.errors == [] and parsed.document["script"] == "#!/bin/bash\ncat \"$INPUT_FILE_0\"  \n"
