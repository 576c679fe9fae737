"""Bad requests are clear 4xx answers, in process: error mapping, submit, uploads, render.

Slurm is absent here (``slurm.bin_dir`` is an empty folder): a request that
passes validation reaches Slurm and answers 503 ``slurm_missing``, so every 400
below is proof that the check comes before Slurm is asked.
"""

import os

import pytest

from support.inprocess import inprocess

pytestmark = pytest.mark.unit

SUBMIT = "/api/slurm/jobs/submit"
INIT = "/api/v2/files/upload/init"
RENDER = "/api/v2/templates/official.unit/render"
JSON = {"Content-Type": "application/json"}

GOOD_JOB = {"jobName": "test_job", "partition": "group1", "nodes": 1, "cpus": 4, "memory": "16GB",
            "time": "01:00:00", "script": "#!/bin/bash\necho Hello World", "jobId": "tmp-1234567890"}

TEMPLATE = """\
name: Unit
version: "1.0.0"
slurm:
  partition: {default: compute, choices: [compute, group1]}
  nodes: {default: 1, min: 1, max: 4}
  cpus: {default: 1, min: 1, max: 32}
  memory: {default: 4G, max: 64G}
  time: {default: "01:00:00", max: "1-00:00:00"}
parameters:
  - name: steps
    type: int
    default: 10
    min: 1
    max: 1000
  - name: label
    type: string
    default: ""
    max_length: 50
script: |
  echo "$PARAM_LABEL" "$PARAM_STEPS"
"""


@pytest.fixture(scope="module")
def portal():
    with inprocess() as portal:
        with open(os.path.join(portal.shared.templates, "official", "unit.yaml"), "w") as handle:
            handle.write(TEMPLATE)
        assert portal.scan("templates")["added"] == 1
        yield portal


def submit(portal, body=None, **kwargs):
    if body is not None:
        kwargs["json"] = body
    return portal.post(SUBMIT, user="alice", **kwargs)


def refused(answer, status=400):
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json["success"] is False
    return answer.json


# --- error mapping ---------------------------------------------------------------------------

def test_an_unknown_route_is_a_json_404(portal):
    assert refused(portal.get("/api/v2/nothing-here", user="alice"), 404) == {
        "success": False, "error": "not_found", "message": "There is no resource at /api/v2/nothing-here."}


def test_a_wrong_method_is_a_json_405(portal):
    assert refused(portal.request("PUT", "/api/v2/me", user="alice"), 405) == {
        "success": False, "error": "method_not_allowed", "message": "Method PUT is not allowed on /api/v2/me."}


@pytest.mark.parametrize("path", [SUBMIT, INIT, RENDER])
@pytest.mark.parametrize("body, error, message", [
    ('{"a": 1,', "malformed_json", "line 1, column 9"),
    ("[1, 2]", "malformed_json", "The request body must be a JSON object."),
    ('"text"', "malformed_json", "The request body must be a JSON object."),
    ("[" * 5000 + "]" * 5000, "malformed_json", "deeper than 32 levels"),
    ('{"nodes": ' + "9" * 5000 + "}", "malformed_json", "an integer of 5000 digits"),
    ("\xff\xfe", "malformed_json", ""),
], ids=["truncated", "array", "string", "deep", "huge int", "not utf-8"])
def test_bodies_that_are_not_a_json_object_are_400(portal, path, body, error, message):
    body = body.encode("latin-1") if body == "\xff\xfe" else body
    answer = refused(portal.post(path, user="alice", body=body, headers=JSON))
    assert answer["error"] == error
    assert message in answer["message"]


@pytest.mark.parametrize("path", [SUBMIT, INIT])
def test_a_missing_body_is_400_missing_body(portal, path):
    assert refused(portal.post(path, user="alice"))["error"] == "missing_body"


@pytest.mark.parametrize("path", [SUBMIT, INIT])
def test_a_form_body_is_415(portal, path):
    answer = refused(portal.post(path, user="alice", body="a=b",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert answer["error"] == "unsupported_media_type"


# --- submit ------------------------------------------------------------------------------------

def test_a_valid_job_gets_as_far_as_slurm_which_is_missing_here(portal):
    answer = refused(submit(portal, GOOD_JOB), 503)
    assert answer["error"] == "slurm_missing"


@pytest.mark.parametrize("field, value, message", [
    ("nodes", "x", "must be a whole number"),
    ("nodes", [1], "must be a whole number"),
    ("nodes", 1.5, "must be a whole number"),
    ("nodes", True, "must be a whole number"),
    ("cpus", {"n": 1}, "must be a whole number"),
    ("files", "no", "must be a list of files"),
    ("files", {"a": 1}, "must be a list of files"),
], ids=lambda value: repr(value)[:20])
def test_submit_fields_of_the_wrong_type_are_named(portal, field, value, message):
    answer = refused(submit(portal, {**GOOD_JOB, field: value}))
    assert answer["errors"][field] == message


@pytest.mark.parametrize("field, value", [
    ("jobName", 7), ("jobName", ["a"]), ("partition", 3), ("memory", ["16G"]), ("time", {"h": 1}),
    ("script", 42), ("jobId", 12), ("apptainerImage", "python"),
], ids=lambda value: repr(value)[:20])
def test_submit_fields_of_another_json_type_are_400_naming_the_field(portal, field, value):
    assert field in refused(submit(portal, {**GOOD_JOB, field: value}))["errors"]


def test_every_bad_field_is_named_at_once(portal):
    answer = refused(submit(portal, {**GOOD_JOB, "nodes": "x", "cpus": [1], "files": "no"}))
    assert answer["errors"] == {"cpus": "must be a whole number", "files": "must be a list of files",
                                "nodes": "must be a whole number"}
    assert answer["message"] == "The job request is not valid: cpus must be a whole number (and 2 more)."


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "bell\x07", "nul\x00x", "del\x7f", "line\u2028sep"],
                         ids=["newline", "tab", "bell", "nul", "del", "u2028"])
def test_job_names_with_control_characters_are_refused(portal, name):
    answer = refused(submit(portal, {**GOOD_JOB, "jobName": name}))
    assert answer["errors"] == {"jobName": "must not contain line breaks, tabs or other control characters"}


@pytest.mark.parametrize("name", ["Simulation \u00e9t\u00e9 2026", "\u6a21\u62df", "r\u00e9sum\u00e9-\u03b1\u03b2"])
def test_job_names_in_any_script_pass_validation(portal, name):
    assert refused(submit(portal, {**GOOD_JOB, "jobName": name}), 503)["error"] == "slurm_missing"


@pytest.mark.parametrize("field, value", [
    *[("memory", value) for value in ("lots", "16 XB", "-1G", "1e3G", "9" * 400 + "G")],
    *[("time", value) for value in ("forever", "1-", "01:00:00:00", "-5", "9" * 400)],
], ids=lambda value: repr(value)[:20])
def test_sizes_and_time_limits_that_slurm_would_not_read_are_refused(portal, field, value):
    assert field in refused(submit(portal, {**GOOD_JOB, field: value}))["errors"]


@pytest.mark.parametrize("field, value", [
    *[("memory", value) for value in ("16GB", "16G", "512M", "1T", "2048", "1.5G")],
    *[("time", value) for value in ("90", "30:00", "01:00:00", "2-12", "2-12:30", "2-12:30:15")],
])
def test_sizes_and_time_limits_in_slurm_formats_pass_validation(portal, field, value):
    assert refused(submit(portal, {**GOOD_JOB, field: value}), 503)["error"] == "slurm_missing"


@pytest.mark.parametrize("option", ["--uid=0", "--gid=0", "--wrap=id", "--export=ALL", "--chdir=/root",
                                    "--output=/etc/passwd", "--get-user-env", "--propagate=ALL"])
def test_sbatch_options_outside_the_allow_list_are_refused_with_their_line(portal, option):
    script = f"#!/bin/bash\n# a comment\n#SBATCH {option}\necho hi\n"
    answer = refused(submit(portal, {**GOOD_JOB, "script": script}))
    name = option.split("=")[0]
    assert f"#SBATCH line 3: the option {name} is not allowed in a portal job" in answer["errors"]["script"]


@pytest.mark.parametrize("lines", ["#SBATCH --account=physics", "#SBATCH --gres=gpu:1",
                                   "#SBATCH --array=1-4", "#SBATCH --constraint=avx2"])
def test_allow_listed_sbatch_options_pass_validation(portal, lines):
    script = f"#!/bin/bash\n{lines}\necho hi\n"
    assert refused(submit(portal, {**GOOD_JOB, "script": script}), 503)["error"] == "slurm_missing"


@pytest.mark.parametrize("path", ["/shared/data/a\nb.txt", "/shared/data/a\rb.txt", "/shared/\x1bdata"],
                         ids=["newline", "carriage return", "escape"])
def test_file_paths_with_control_characters_are_refused(portal, path):
    files = [{"filename": "a.txt", "storage_path": path, "size": 1}]
    answer = refused(submit(portal, {**GOOD_JOB, "files": files}))
    assert any(key.startswith("files") for key in answer["errors"])


def test_a_template_submit_with_an_unknown_parameter_is_refused_before_slurm(portal):
    answer = refused(submit(portal, {"templateId": "official.unit", "parameters": {"nope": 1}}))
    assert answer["errors"] == {"parameters.nope": "the template has no such parameter"}


# --- upload init -------------------------------------------------------------------------------

def test_an_upload_starts_with_its_chunk_plan(portal):
    answer = portal.post(INIT, user="alice", json={"filename": "a.txt", "size": 10})
    assert answer.status_code == 201
    assert answer.json["chunk_size"] == 5 * 1024 * 1024 and answer.json["total_chunks"] == 1
    assert answer.json["received_chunks"] == []


@pytest.mark.parametrize("body, field, message", [
    ({"filename": "a\n.txt", "size": 10}, "filename", "must not contain control characters"),
    ({"filename": "a.txt", "size": "x"}, "size", "must be an integer number of bytes"),
    ({"filename": "a.txt", "size": -1}, "size", ""),
    ({"filename": "a.txt", "size": 1.5}, "size", "must be an integer number of bytes"),
    ({"filename": 5, "size": 10}, "filename", ""),
    ({"filename": "", "size": 10}, "filename", ""),
    ({"filename": ".", "size": 10}, "filename", ""),
    ({"filename": "..", "size": 10}, "filename", ""),
    ({"size": 10}, "filename", ""),
    ({"filename": "a.txt"}, "size", ""),
    ({"filename": "a.txt", "size": 10, "chunk_size": "big"}, "chunk_size", ""),
    ({"filename": "a.txt", "size": 10, "job_id": ["x"]}, "job_id", ""),
], ids=lambda value: repr(value)[:30])
def test_upload_init_names_the_bad_field(portal, body, field, message):
    answer = refused(portal.post(INIT, user="alice", json=body))
    assert message in answer["errors"][field]


def test_an_upload_larger_than_max_size_is_413(portal):
    answer = refused(portal.post(INIT, user="alice", json={"filename": "big.bin", "size": 51 * 1024 ** 3}), 413)
    assert answer["success"] is False


# --- template render: the job model of a template and a body -----------------------------------

def render(portal, body):
    return portal.post(RENDER, user="alice", json=body)


def test_a_render_builds_the_batch_script_from_checked_values(portal):
    answer = render(portal, {"parameters": {"steps": 5, "label": "x'; rm -rf /"}, "overrides": {"nodes": 2}})
    assert answer.status_code == 200, answer.text
    body = answer.json
    assert body["slurm"] == {"partition": "compute", "nodes": 2, "cpus": 1, "memory": "4G", "time": "01:00:00"}
    assert body["environment"]["PARAM_STEPS"] == "5"
    assert body["environment"]["PARAM_LABEL"] == "x'; rm -rf /"
    script = body["script"]
    assert script.startswith("#!/bin/bash -l\n#SBATCH --job-name=unit\n#SBATCH --partition=compute\n"
                             "#SBATCH --nodes=2\n")
    # A value is data: quoted on one line, never a command.
    assert "\nexport PARAM_LABEL='x'\"'\"'; rm -rf /'\n" in script
    # The template's own script, byte for byte: inline, or saved beside the batch script.
    body_text = 'echo "$PARAM_LABEL" "$PARAM_STEPS"\n'
    assert script.endswith(body_text) or body.get("body") == body_text


def test_a_render_names_every_value_the_template_refuses(portal):
    answer = refused(render(portal, {"parameters": {"steps": 5000, "label": 3, "nope": 1},
                                     "overrides": {"nodes": 9, "memory": "1000G", "time": "x"}}))
    errors = answer["errors"]
    assert set(errors) == {"overrides.memory", "overrides.nodes", "overrides.time", "parameters.label",
                           "parameters.nope", "parameters.steps"}
    assert errors["overrides.memory"] == "must be at most 64G"
    assert errors["overrides.nodes"] == "must be at most 4"
    assert errors["overrides.time"].startswith("expected a time limit")
    assert errors["parameters.label"] == "must be a string"
    assert errors["parameters.nope"] == "the template has no such parameter"
    assert errors["parameters.steps"] == "must be at most 1000"
    assert answer["message"] == "6 value(s) are not acceptable for this template."


@pytest.mark.parametrize("field, value", [("overrides", "x"), ("overrides", [1]), ("parameters", "x"),
                                          ("parameters", 3), ("files", "x"), ("files", 3)])
def test_render_fields_of_the_wrong_type_are_400(portal, field, value):
    answer = refused(render(portal, {field: value}))
    assert any(key == field or key.startswith(field + ".") for key in answer["errors"])


@pytest.mark.parametrize("value", [10 ** 30, -(10 ** 30)], ids=["huge", "negative"])
def test_render_integers_beyond_64_bits_are_malformed_json(portal, value):
    answer = refused(render(portal, {"parameters": {"steps": value}}))
    assert answer["error"] == "malformed_json" and "an integer of 31 digits" in answer["message"]


@pytest.mark.parametrize("value", ["9" * 400, 0, 1001, "ten", 2.5, [1]], ids=repr)
def test_render_values_outside_the_parameter_are_named(portal, value):
    assert "parameters.steps" in refused(render(portal, {"parameters": {"steps": value}}))["errors"]


def test_an_unknown_template_is_404(portal):
    answer = refused(portal.post("/api/v2/templates/official.nope/render", user="alice", json={}), 404)
    assert answer == {"success": False, "error": "template_not_found",
                      "message": "There is no template 'official.nope'."}
