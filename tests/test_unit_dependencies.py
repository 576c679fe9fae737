"""Dependencies and job arrays, as a submit, a template and a user's #SBATCH line give them:
one parser each (slurm.values), refusals naming the field."""

import pytest

from hpcportal.catalog.templates import settings
from hpcportal.errors import ValidationError
from hpcportal.jobs.request import check_array_size, check_resources
from hpcportal.slurm import directives, values
from hpcportal.slurm.job import JobSpec
from hpcportal.slurm.script import render_batch_script

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("given, terms, combine", [
    ("afterok:123", [("afterok", "123")], "all"),
    ("afterok:123:124", [("afterok", "123"), ("afterok", "124")], "all"),
    ("afterany:123_4", [("afterany", "123_4")], "all"),
    ("afternotok:7,aftercorr:8", [("afternotok", "7"), ("aftercorr", "8")], "all"),
    ("afterok:1?afternotok:2", [("afterok", "1"), ("afternotok", "2")], "any"),
    ("after:5+10", [("after", "5+10")], "all"),
    ("singleton", [("singleton", None)], "all"),
    ("afterok:9,singleton", [("afterok", "9"), ("singleton", None)], "all"),
])
def test_slurm_dependency_syntax_is_read(given, terms, combine):
    assert values.dependency_terms(given) == (terms, combine)
    assert values.dependency(given) == given


@pytest.mark.parametrize("given", [
    "", "afterok", "afterok:", "afterok:x", "afterok:1::2", "afterok:1,afterok:2?afterany:3",
    "afterburstbuffer:1", "afterok:1+5", "afterok:0", "afterok:1;rm -rf /", "afterok:1 ", "Afterok:1",
    "afterok:123_", "afterok:99999999999", "singleton:1", "afterok:1\nafterok:2", "x" * 2000,
])
def test_anything_else_is_refused_with_a_reason(given):
    with pytest.raises(ValueError) as caught:
        values.dependency(given)
    assert str(caught.value)


@pytest.mark.parametrize("given, size", [
    ("0-9", 10), ("1,3,5-7", 5), ("0-99%4", 100), ("0-15:4", 4), ("1,1,2", 2), ("7", 1),
])
def test_array_sizes(given, size):
    assert values.array_size(given) == size
    assert values.array(given, max_size=size) == given


@pytest.mark.parametrize("given", ["", "0-", "a", "9-1", "0-9%0", "0-9%", " 1", "0-9:0", "1;2", "-1",
                                   "0-4000001", "1,,2", "0-9%2%3"])
def test_bad_arrays_are_refused(given):
    with pytest.raises(ValueError):
        values.array_size(given)


def test_an_array_larger_than_the_site_allows_names_the_setting():
    with pytest.raises(ValueError, match="jobs.max_array_size"):
        values.array("0-1000", max_size=1000)
    with pytest.raises(ValidationError) as caught:
        check_array_size("0-10", 10)
    assert set(caught.value.errors) == {"array"}
    check_array_size(None, 1)


def test_a_request_names_each_bad_field():
    body = {"jobName": "j", "script": "true", "dependency": "afterok:abc", "array": "0-5000"}
    with pytest.raises(ValidationError) as caught:
        check_resources(body, max_script_size=1000, max_array_size=1000)
    assert set(caught.value.errors) == {"dependency", "array"}
    checked = check_resources({**body, "dependency": "afterok:12_3?afterany:4", "array": "0-9%2"},
                              max_script_size=1000, max_array_size=1000)
    assert (checked["dependency"], checked["array"]) == ("afterok:12_3?afterany:4", "0-9%2")


def test_the_batch_script_carries_them_as_sbatch_reads_them():
    spec = JobSpec(script="true", script_path="/j/script.sh", name="n", dependency="afterok:1?afterany:2_3",
                   array="0-3%2")
    text = render_batch_script(spec)
    assert '#SBATCH --dependency="afterok:1?afterany:2_3"\n' in text
    assert "#SBATCH --array=0-3%2\n" in text
    # sbatch would read the line back as the same value.
    read = directives.script_options(text.split(": hpcportal", 1)[0])
    assert read["dependency"].value == "afterok:1?afterany:2_3" and read["array"].value == "0-3%2"


def test_a_users_sbatch_lines_use_the_same_parsers():
    with pytest.raises(ValidationError) as caught:
        directives.script_options("#SBATCH --dependency=afterok:nope\n")
    assert "dependency" in caught.value.errors["script"]
    assert directives.recorded_values(directives.script_options("#SBATCH -d singleton -a 1-3\n")) == {
        "dependency": "singleton", "array": "1-3"}


def test_templates_may_set_and_bound_them():
    errors = {}
    checked, _name = settings.resolve_overrides(
        {"slurm": {"dependency": "singleton", "array": {"default": "0-3", "fixed": True}}},
        {"dependency": "afterok:5"}, errors)
    assert errors == {} and checked == {"dependency": "afterok:5", "array": "0-3"}
    errors = {}
    settings.resolve_overrides({"slurm": {"array": {"default": "0-3", "fixed": True}}},
                               {"array": "0-9", "dependency": "afterok:x"}, errors)
    assert set(errors) == {"overrides.array", "overrides.dependency"}
    assert settings.setting_problems("array", settings.slurm_setting("9-1"))
    assert settings.setting_problems("dependency", settings.slurm_setting("after:x"))


def test_pending_reasons_are_plain_sentences():
    from hpcportal.jobs.reasons import reason_text
    job = {"partition": "compute", "dependency": "afterok:123(unfulfilled),afterany:7(unfulfilled)"}
    assert reason_text("Dependency", job) == "waiting for job 123 to finish successfully and for job 7 to end"
    assert reason_text("Dependency", {"dependency": "afterok:1(unfulfilled)?afternotok:2_3(unfulfilled)"}) == \
        "waiting for job 1 to finish successfully or for job 2_3 to fail"
    assert reason_text("Dependency", {"dependency": "singleton(unfulfilled)"}) == \
        "waiting for your other jobs of the same name to end"
    assert reason_text("Resources", job) == "waiting for free resources in partition compute"
    assert reason_text("AssocMaxJobsLimit", job) == "your account's limit on running jobs is reached"
    assert reason_text("QOSMaxJobsPerUserLimit", job) == "your limit on running jobs (QOS) is reached"
    assert reason_text("AssocGrpCpuLimit", job) == "your account's limit on CPUs in use is reached"
    assert reason_text("QOSGrpNodeLimit", job) == "a limit of the QOS is reached"
    assert reason_text("SomethingNew", job) == "Slurm says: SomethingNew"
    assert reason_text("None", job) is None and reason_text(None, job) is None


def test_output_paths_are_filled_in_as_slurm_does():
    from hpcportal.jobs.listing import output_path
    job = {"job_id": "42", "user": "alice", "name": "결과 파일", "work_dir": "/home/alice/run",
           "stdout": "/data/%x-%j.out", "stderr": None, "array_job_id": None, "array_task_id": None}
    assert output_path(job, "stdout") == "/data/결과 파일-42.out"
    assert output_path(job, "stderr") == "/data/결과 파일-42.out"  # no --error: with stdout
    task = {**job, "job_id": "45", "array_job_id": "40", "array_task_id": 3, "stdout": None}
    assert output_path(task, "stdout") == "/home/alice/run/slurm-40_3.out"
    assert output_path({**task, "stdout": "o-%A_%4a-%%.txt"}, "stdout") == "/home/alice/run/o-40_0003-%.txt"


def test_the_graph_holds_the_connected_jobs_only():
    from hpcportal.jobs.dependencies import connected
    jobs = [
        {"jobId": "1", "name": "a", "state": "COMPLETED", "dependency": None},
        {"jobId": "2", "name": "b", "state": "RUNNING", "dependency": "afterok:1", "arrayJobId": "2",
         "arrayTaskId": 0},
        {"jobId": "3", "name": "c", "state": "PENDING", "dependency": "afterany:2_0?afternotok:99"},
        {"jobId": "4", "name": "lonely", "state": "PENDING", "dependency": None},
    ]
    graph = connected(jobs, "3")
    assert [n["jobId"] for n in graph["nodes"]] == ["1", "2", "3", "99"]
    assert graph["nodes"][3] == {"jobId": "99", "name": None, "state": None}
    assert {(e["from"], e["to"], e["type"]) for e in graph["edges"]} == {
        ("1", "2", "afterok"), ("2", "3", "afterany"), ("99", "3", "afternotok")}
    assert connected(jobs, "4") == {"nodes": [{"jobId": "4", "name": "lonely", "state": "PENDING"}], "edges": []}


@pytest.mark.parametrize("settings, name", [
    ({"usage_interval": "0.5s"}, "jobs.usage_interval"), ({"usage_interval": "2h"}, "jobs.usage_interval"),
    ({"max_array_size": 0}, "jobs.max_array_size"), ({"usage_max_jobs": -1}, "jobs.usage_max_jobs"),
])
def test_insight_settings_are_bounded(settings, name):
    from hpcportal.config import Config
    from hpcportal.errors import ConfigError
    with pytest.raises(ConfigError, match=name):
        Config.from_dict({"jobs": settings})
    assert Config.from_dict({"jobs": {"usage_interval": "1s"}}).jobs.usage_interval == 1
