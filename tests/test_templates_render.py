"""Rendering: values checked against the template, and inert in the batch script.

The injection tests run the rendered batch script with bash (and a recording
stand-in for apptainer) to show that crafted values reach the job unchanged
and never run.
"""

import os
import stat
import subprocess

import pytest

from hpcportal.catalog import templates as t
from hpcportal.errors import ValidationError
from hpcportal.slurm.job import JobSpec
from hpcportal.slurm.script import bash_quote, render_batch_script

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "templates", "official")

PLAIN = """\
name: Echo values
version: "1.0.0"
slurm:
  partition: {default: compute, choices: [compute, group1]}
  nodes: {default: 1, min: 1, max: 2}
  cpus: {default: 2, max: 8}
  memory: {default: 1G, max: 4G}
  time: {default: "00:10:00", max: "01:00:00"}
  qos: {default: normal, fixed: true}
files:
  - {name: data, patterns: ["*.txt"], max_size: 100}
  - {name: extra, required: false}
parameters:
  - {name: text, type: string, required: true}
  - {name: count, type: int, default: 3, min: 1, max: 10}
  - {name: ratio, type: float, min: 0, max: 1, default: 0.5}
  - {name: mode, type: choice, choices: [fast, slow], default: fast}
  - {name: verbose, type: bool, default: false}
  - {name: tag, type: string, pattern: "[a-z]{1,8}", required: false}
script: |
  printf '%s' "$PARAM_TEXT" > param_text.out
  printf '%s' "$FILE_DATA" > file_data.out
  printf '%s|%s|%s|%s|%s' "$PARAM_COUNT" "$PARAM_RATIO" "$PARAM_MODE" "$PARAM_VERBOSE" "$PARAM_TAG" > others.out
  echo done > done.out
"""

INJECTIONS = [
    "$(touch pwned_dollar)",
    "`touch pwned_backtick`",
    "'; rm -rf ~; '",
    "x\n#SBATCH --uid=0\ntouch pwned_newline",
    "\"; touch pwned_dquote; \"",
    "a\r\n#SBATCH --uid=0",
    "${IFS}$(touch${IFS}pwned_ifs)",
    "\\'; touch pwned_backslash #",
    "x' $'\\n' 'touch pwned_ansi",
]


def load(text, relpath="official/echo.yaml"):
    parsed = t.parse_template(text, relpath)
    assert parsed.valid, parsed.errors
    return parsed


def render(parsed, request, **kwargs):
    kwargs.setdefault("job_dir", "/shared/uploads/alice/jobs/preview")
    return t.render(parsed.document, request, template_id=parsed.id, **kwargs)


def good_request(**parameters):
    return {"parameters": {"text": "hello", **parameters},
            "files": [{"name": "data", "storage_path": "/shared/uploads/alice/files/x/in.txt", "size": 10}]}


def sbatch_directives(script):
    """The #SBATCH lines sbatch would read: those before the first command line."""
    found = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            found.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return found


def run_rendered(result, cwd, env=None):
    """Run a render's batch script as a submit would: its body saved where the script runs it."""
    with open(result["body_path"], "w", encoding="utf-8") as handle:
        handle.write(result["body"])
    return run_script(result["script"], cwd, env)


def run_script(script, cwd, env=None):
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    (home / "canary").write_text("still here")
    path = cwd / "job.sh"
    path.write_text(script)
    environment = {"PATH": os.environ["PATH"], "HOME": str(home)}
    environment.update(env or {})
    result = subprocess.run(["bash", str(path)], cwd=cwd, env=environment, capture_output=True,
                            text=True, timeout=60)
    assert (home / "canary").read_text() == "still here"
    return result


def test_render_with_defaults_builds_directives_and_environment():
    parsed = load(PLAIN)
    result = render(parsed, good_request())
    assert sbatch_directives(result["script"]) == [
        "#SBATCH --job-name=echo", "#SBATCH --partition=compute", "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=2", "#SBATCH --mem=1G", "#SBATCH --time=00:10:00",
        "#SBATCH --qos=normal"]
    env = result["environment"]
    assert env["PARAM_TEXT"] == "hello"
    assert env["PARAM_COUNT"] == "3"
    assert env["PARAM_RATIO"] == "0.5"
    assert env["PARAM_VERBOSE"] == "false"
    assert env["PARAM_TAG"] == ""
    assert env["FILE_DATA"] == "/shared/uploads/alice/files/x/in.txt"
    assert env["FILE_EXTRA"] == ""
    assert env["INPUT_FILE_0"] == env["FILE_DATA"] and env["INPUT_FILE_COUNT"] == "1"
    assert result["image"] is None
    # The template's body is saved byte for byte, as a user's script is, and run from there.
    assert result["body"] == result.spec.script == parsed.document["script"]
    assert result["body_path"] == "/shared/uploads/alice/jobs/preview/script.sh"
    assert result["script"].endswith("\nexec /bin/bash /shared/uploads/alice/jobs/preview/script.sh\n")
    assert result["script"] == render_batch_script(result.spec)


def test_overrides_within_bounds_are_applied_and_normalised():
    parsed = load(PLAIN)
    request = good_request(count="7", ratio="0.25", mode="slow", verbose="true", tag="abc")
    request["overrides"] = {"partition": "group1", "nodes": 2, "cpus": "8", "memory": "2048MB",
                            "time": "45", "job_name": "my-run_1", "qos": "normal"}
    result = render(parsed, request)
    assert sbatch_directives(result["script"]) == [
        "#SBATCH --job-name=my-run_1", "#SBATCH --partition=group1", "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8", "#SBATCH --mem=2G", "#SBATCH --time=00:45:00",
        "#SBATCH --qos=normal"]
    assert result["parameters"] == {"text": "hello", "count": 7, "ratio": 0.25, "mode": "slow",
                                    "verbose": True, "tag": "abc"}


@pytest.mark.parametrize("request_update, field, reason", [
    ({"parameters": {}}, "parameters.text", "required"),
    ({"parameters": {"text": "x", "count": "three"}}, "parameters.count", "integer"),
    ({"parameters": {"text": "x", "count": 11}}, "parameters.count", "at most 10"),
    ({"parameters": {"text": "x", "count": 0}}, "parameters.count", "at least 1"),
    ({"parameters": {"text": "x", "count": True}}, "parameters.count", "integer"),
    ({"parameters": {"text": "x", "ratio": "nan"}}, "parameters.ratio", "number"),
    ({"parameters": {"text": "x", "ratio": 1.5}}, "parameters.ratio", "at most 1"),
    ({"parameters": {"text": "x", "mode": "medium"}}, "parameters.mode", "one of fast, slow"),
    ({"parameters": {"text": "x", "verbose": "maybe"}}, "parameters.verbose", "true or false"),
    ({"parameters": {"text": "x", "tag": "UPPER"}}, "parameters.tag", "must match"),
    ({"parameters": {"text": 5}}, "parameters.text", "string"),
    ({"parameters": {"text": "a\x00b"}}, "parameters.text", "NUL"),
    ({"parameters": {"text": "x" * 5000}}, "parameters.text", "at most 4096"),
    ({"parameters": {"text": "x", "unknown": 1}}, "parameters.unknown", "no such parameter"),
    ({"files": []}, "files.data", "required"),
    ({"files": [{"name": "data", "storage_path": "/x/in.csv", "size": 1}]}, "files.data", "*.txt"),
    ({"files": [{"name": "data", "storage_path": "/x/in.txt", "size": 101}]}, "files.data", "larger"),
    ({"files": [{"name": "data", "storage_path": "relative.txt"}]}, "files[0]", "absolute"),
    ({"files": [{"name": "nope", "storage_path": "/x/a.txt"}]}, "files[0]", "no file named"),
    ({"files": [{"name": {"slot": "data"}, "storage_path": "/x/a.txt"}]}, "files[0]", "must be a string"),
    ({"files": [{"name": ["data"], "storage_path": "/x/a.txt"}]}, "files[0]", "must be a string"),
    ({"files": [{"name": "data", "storage_path": "/x/a\nb.txt"}]}, "files[0]", "line breaks"),
    ({"overrides": {"nodes": 3}}, "overrides.nodes", "at most 2"),
    ({"overrides": {"nodes": 0}}, "overrides.nodes", "at least 1"),
    ({"overrides": {"memory": "8G"}}, "overrides.memory", "at most 4G"),
    ({"overrides": {"memory": "plenty"}}, "overrides.memory", "size"),
    ({"overrides": {"time": "02:00:00"}}, "overrides.time", "at most 01:00:00"),
    ({"overrides": {"time": "soon"}}, "overrides.time", "time limit"),
    ({"overrides": {"partition": "viz"}}, "overrides.partition", "one of compute, group1"),
    ({"overrides": {"partition": "compute --uid=0"}}, "overrides.partition", "name"),
    ({"overrides": {"qos": "high"}}, "overrides.qos", "fixed"),
    ({"overrides": {"job_name": "a\n#SBATCH --uid=0"}}, "overrides.job_name", "line breaks"),
    ({"overrides": {"uid": 0}}, "overrides.uid", "unknown"),
    ({"extra": 1}, "extra", "unknown"),
])
def test_each_kind_of_bad_value_is_named(request_update, field, reason):
    parsed = load(PLAIN)
    request = good_request()
    request.update(request_update)
    with pytest.raises(ValidationError) as caught:
        render(parsed, request)
    assert field in caught.value.errors, caught.value.errors
    assert reason in caught.value.errors[field]


def test_every_problem_is_listed_at_once():
    parsed = load(PLAIN)
    with pytest.raises(ValidationError) as caught:
        render(parsed, {"parameters": {"count": 99, "mode": "x"}, "files": [],
                        "overrides": {"nodes": 9}})
    assert set(caught.value.errors) == {"parameters.text", "parameters.count", "parameters.mode",
                                        "files.data", "overrides.nodes"}


def test_files_without_a_slot_name_fill_matching_slots_in_order():
    parsed = load(PLAIN)
    result = render(parsed, {"parameters": {"text": "x"},
                             "files": [{"filename": "in.txt", "storage_path": "/u/abc/in.txt", "size": 5},
                                       {"filename": "more.bin", "storage_path": "/u/abc/more.bin"}]})
    env = result["environment"]
    assert env["FILE_DATA"] == "/u/abc/in.txt"
    assert env["FILE_EXTRA"] == "/u/abc/more.bin"
    assert [env["INPUT_FILE_0"], env["INPUT_FILE_1"]] == ["/u/abc/in.txt", "/u/abc/more.bin"]


def test_file_size_is_read_from_disk_when_not_given(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 500)
    parsed = load(PLAIN)
    with pytest.raises(ValidationError) as caught:
        render(parsed, {"parameters": {"text": "x"}, "files": [{"name": "data", "storage_path": str(big)}]})
    assert "larger" in caught.value.errors["files.data"]


def test_a_template_whose_image_is_missing_cannot_render():
    with open(os.path.join(EXAMPLES, "python-script.yaml"), encoding="utf-8") as handle:
        parsed = load(handle.read(), "official/python-script.yaml")
    with pytest.raises(ValidationError) as caught:
        render(parsed, {"files": [{"name": "script", "storage_path": "/x/a.py", "size": 1}]}, image=None)
    assert "python*" in caught.value.errors["image"]


@pytest.mark.parametrize("value", INJECTIONS)
def test_crafted_values_reach_the_job_unchanged_and_inert(tmp_path, value):
    parsed = load(PLAIN)
    data = tmp_path / "in.txt"
    data.write_text("data")
    # File paths are values too.
    request = {"parameters": {"text": value, "tag": None},
               "files": [{"name": "data", "storage_path": str(data), "size": 4}],
               "overrides": {}}
    result = render(parsed, request, job_dir=str(tmp_path))
    script = result["script"]
    assert sbatch_directives(script) == sbatch_directives(render(parsed, good_request())["script"])
    assert not any(line.lstrip().startswith("#SBATCH --uid") for line in script.splitlines())
    outcome = run_rendered(result, tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert (tmp_path / "param_text.out").read_bytes().decode() == value
    assert (tmp_path / "file_data.out").read_text() == str(data)
    assert (tmp_path / "done.out").exists()
    assert not list(tmp_path.glob("pwned*"))
    assert outcome.stderr == ""


def test_crafted_file_paths_are_inert_too(tmp_path):
    parsed = load(PLAIN)
    weird = tmp_path / "$(touch pwned_path);`touch pwned_tick`'x.txt"
    weird.write_text("d")
    result = render(parsed, {"parameters": {"text": "x"},
                             "files": [{"name": "data", "storage_path": str(weird)}]}, job_dir=str(tmp_path))
    outcome = run_rendered(result, tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert (tmp_path / "file_data.out").read_text() == str(weird)
    assert not list(tmp_path.glob("pwned*"))


CONTAINER = PLAIN.replace("files:\n", """\
apptainer:
  image: "echo*"
  app: tools
  gpu: true
  options: [--cleanenv]
  binds: ["/shared/data:/data:ro"]
  env: {OMP_NUM_THREADS: 4, GREETING: "it's $(not run)"}
files:
""").replace('  echo done > done.out\n', '  echo done > done.out\n  printf "%s|%s" "$OMP_NUM_THREADS" "$GREETING" > container_env.out\n')

APPTAINER_STAND_IN = """\
#!/bin/bash
# Test stand-in for apptainer: records its arguments, then runs the command after the image.
printf '%s\\n' "$@" > "$(dirname "$0")/apptainer-args.txt"
shift  # exec
while [ $# -gt 0 ]; do
  case "$1" in
    --bind|--app) shift 2 ;;
    --*) shift ;;
    *) shift; break ;;
  esac
done
# What --cleanenv keeps: APPTAINERENV_X becomes X inside the container.
for name in $(compgen -e); do
  case "$name" in APPTAINERENV_*) export "${name#APPTAINERENV_}=${!name}" ;; esac
done
exec "$@"
"""


@pytest.mark.parametrize("value", INJECTIONS[:4])
def test_container_jobs_run_the_body_file_through_apptainer_with_inert_values(tmp_path, value):
    parsed = load(CONTAINER)
    stand_in = tmp_path / "apptainer"
    stand_in.write_text(APPTAINER_STAND_IN)
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    image = {"id": "echo_1.0", "name": "echo_1.0.sif", "path": "/shared/apptainer/images/compute/echo_1.0.sif"}
    data = tmp_path / "in.txt"
    data.write_text("d")
    result = render(parsed, {"parameters": {"text": value}, "files": [{"name": "data", "storage_path": str(data)}]},
                    image=image, job_dir=str(job_dir), apptainer_command=str(stand_in))
    assert result["image"] == image
    assert result["body_path"] == str(job_dir / "script.sh")
    # The submitter saves the body byte for byte; the batch script runs it.
    (job_dir / "script.sh").write_text(result["body"])
    outcome = run_script(result["script"], job_dir)
    assert outcome.returncode == 0, outcome.stderr
    assert (job_dir / "param_text.out").read_bytes().decode() == value
    assert (job_dir / "container_env.out").read_text() == "4|it's $(not run)"
    args = (tmp_path / "apptainer-args.txt").read_text().splitlines()
    assert args[:3] == ["exec", "--nv", "--cleanenv"]
    assert args[-3:] == [image["path"], "/bin/bash", str(job_dir / "script.sh")]
    assert ["--app", "tools"] == args[args.index("--app"):args.index("--app") + 2]
    assert "/shared/data:/data:ro" in args and str(job_dir) in args
    assert not list(tmp_path.glob("**/pwned*"))


def test_the_builder_refuses_unsafe_directives_and_names():
    def build(**fields):
        return render_batch_script(JobSpec(script="true\n", script_path="/j/s.sh", **fields))
    with pytest.raises(ValueError):
        build(partition="a\n#SBATCH --uid=0")
    # A space cannot end the value: it is quoted as sbatch reads it (values are checked before).
    assert '#SBATCH --partition="a b"\n' in build(partition="a b")
    with pytest.raises(ValueError):
        build(environment={"BAD NAME": "x"})
    with pytest.raises(ValueError):
        build(environment={"X": "nul\x00"})
    with pytest.raises(ValueError):  # apptainer would read two binds
        build(image="/i.sif", binds=("/a,/etc",))


def test_bash_quote_keeps_every_value_on_one_line():
    for value in INJECTIONS + ["plain", "", "tab\there", "é ü 漢字", "\x7f\x01"]:
        quoted = bash_quote(value)
        assert "\n" not in quoted and "\r" not in quoted
        echoed = subprocess.run(["bash", "-c", f"printf '%s' {quoted}"], capture_output=True, timeout=30)
        assert echoed.stdout.decode() == value


def test_every_example_renders_with_its_defaults():
    images = {"path": "/shared/apptainer/images/compute/any.sif", "id": "any", "name": "any.sif"}
    for name in sorted(os.listdir(EXAMPLES)):
        with open(os.path.join(EXAMPLES, name), encoding="utf-8") as handle:
            parsed = load(handle.read(), f"official/{name}")
        files = []
        for slot in parsed.document.get("files", []):
            pattern = (slot.get("patterns") or ["*.dat"])[0]
            files.append({"name": slot["name"], "storage_path": "/shared/f/" + pattern.replace("*", "input"),
                          "size": 1})
        result = render(parsed, {"files": files}, image=images)
        assert result["script"].startswith("#!/bin/bash -l\n#SBATCH --job-name=")
        syntax = subprocess.run(["bash", "-n"], input=result["script"] + parsed.document["script"],
                                capture_output=True, text=True, timeout=30)
        assert syntax.returncode == 0, (name, syntax.stderr)


def test_the_image_is_chosen_for_the_partition():
    parsed = load(CONTAINER)
    images = [
        {"id": "echo_2.0", "name": "echo_2.0.sif", "version": "2.0", "path": "/i/viz/echo_2.0.sif",
         "partitions": ["viz"]},
        {"id": "echo_1.0", "name": "echo_1.0.sif", "version": "1.0", "path": "/i/compute/echo_1.0.sif",
         "partitions": ["compute", "group1"]},
    ]
    request = {"parameters": {"text": "x"}, "files": [{"name": "data", "storage_path": "/d/in.txt", "size": 1}]}
    result = render(parsed, request, images=images)
    assert result["image"]["id"] == "echo_1.0"  # the newest image is for viz only
    assert t.resolve_image("echo*", images)["id"] == "echo_2.0"
    with pytest.raises(ValidationError) as caught:
        render(parsed, request, images=images[:1])
    assert "partition compute" in caught.value.errors["image"]
    with pytest.raises(ValidationError) as caught:
        render(parsed, request, images=[])
    assert "matches 'echo*'" in caught.value.errors["image"]
