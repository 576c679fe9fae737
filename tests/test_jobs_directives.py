"""The user's own #SBATCH lines, read as sbatch reads them (no daemon: the daemon tests
in tests/test_jobs_names.py submit them to the real Slurm)."""

import pytest

from hpcportal.errors import ValidationError
from hpcportal.slurm import directives
from hpcportal.slurm import script as batch
from hpcportal.slurm.job import JobSpec

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit


def options(text):
    return {option: d.value for option, d in directives.script_options(text).items()}


def test_the_leading_block_is_read_as_sbatch_reads_it():
    text = ("#!/bin/bash\n"
            "#SBATCH --job-name=\"데이터 분석 (1)\" -N 2\n"
            "#SBATCH -c4 --mem 16GB   # sbatch ignores an unquoted # and what follows\n"
            "\n"
            "# an ordinary comment\n"
            "   \n"
            "#SBATCH -p compute --exclusive\n"
            "#SBATCH --time=90 -J 'last one wins'\r\n"
            "#SLURM --qos=normal\n"
            "module load x   # the first command ends the block\n"
            "#SBATCH --uid=0\n")
    assert options(text) == {"nodes": "2", "cpus-per-task": "4", "mem": "16G", "partition": "compute",
                             "exclusive": None, "time": "01:30:00", "job-name": "last one wins", "qos": "normal"}
    found = directives.parse(text)
    assert [(d.option, d.line) for d in found][:3] == [("job-name", 2), ("nodes", 2), ("cpus-per-task", 3)]


@pytest.mark.parametrize("line, expected", [
    ('--job-name="a \\"q\\" b"', ['--job-name=a "q" b']),
    # sbatch tests for whitespace before it looks at the escape: an escaped space still splits
    # (sbatch then refuses the script: "Invalid directive found in batch script: b").
    ("--job-name=a\\ b", ["--job-name=a", "b"]),
    ("--job-name='#1' x#y", ["--job-name=#1", "x"]),
    ("  -J  x  ", ["-J", "x"]),
    ("", []),
    ("# only a comment", []),
])
def test_arguments_are_split_like_sbatch(line, expected):
    assert directives.split_arguments(line, 1) == expected


@pytest.mark.parametrize("text, option, line", [
    ("#!/bin/bash\n#SBATCH --uid=0\n", "--uid", 2),
    ("#!/bin/bash\n#SBATCH -N 1\n#SBATCH --gid=0\n", "--gid", 3),
    ("#!/bin/bash\n\n#SBATCH --get-user-env\n", "--get-user-env", 3),
    ("#SBATCH --chdir=/root\n", "--chdir", 1),
    ("#SBATCH -D /root\n", "-D (--chdir)", 1),
    ("#SBATCH --output=/etc/x\n", "--output", 1),
    ("#SBATCH -o /etc/x\n", "-o (--output)", 1),
    ("#SBATCH --error=/etc/x\n", "--error", 1),
    ("#SBATCH --export=ALL\n", "--export", 1),
    ("#SBATCH --comment=hpcportal:x\n", "--comment", 1),
    ("#SBATCH --wait\n", "--wait", 1),
    ("#SBATCH --job=abbreviated\n", "--job", 1),
    ("#SBATCH -N 1 --uid=0\n", "--uid", 1),
])
def test_options_off_the_allow_list_are_refused_by_name_and_line(text, option, line):
    with pytest.raises(ValidationError) as caught:
        directives.script_options(text)
    reason = caught.value.errors["script"]
    assert f"line {line}:" in reason and f"option {option} is not allowed" in reason, reason


@pytest.mark.parametrize("text, needle", [
    ("#SBATCH --mem=1G\n#SBATCH --mem=lots\n", "line 2: --mem=lots"),
    ("#SBATCH --time='1 hour'\n", "line 1: --time=1 hour"),
    ("#SBATCH --partition='compute --uid=0'\n", "line 1: --partition=compute --uid=0"),
    ("#SBATCH --job-name=\"unterminated\n", "line 1: unmatched \""),
    ("#SBATCH --nodes\n", "line 1: --nodes needs a value"),
    ("#SBATCH --hold=yes\n", "line 1: --hold takes no value"),
    ("#SBATCH hetjob\n", "line 1: 'hetjob' is not an option"),
    ("#SBATCH :x\n", "line 1: an argument may not start with ':'"),
    ("#SBATCH --exclusive=everyone\n", "line 1: --exclusive=everyone"),
    ("#SBATCH --mail-type=SOMETIMES\n", "line 1: --mail-type=SOMETIMES"),
    ("#SBATCH --job-name=" + "x" * 129 + "\n", "line 1: --job-name="),
])
def test_values_get_the_same_checks_as_the_body(text, needle):
    with pytest.raises(ValidationError) as caught:
        directives.script_options(text)
    assert needle in caught.value.errors["script"], caught.value.errors


def test_the_body_wins_where_both_speak():
    script = directives.script_options("#SBATCH -J from-script -p viz --mem-per-cpu=2G -t 10 --gres=gpu:1 -c 2\n")
    job = JobSpec(script="", script_path="/j/s.sh", name="from body", memory="4G").with_script_options(script)
    assert job.directives() == [
        ("job-name", "from body"), ("mem", "4G"), ("partition", "viz"), ("time", "00:10:00"),
        ("gres", "gpu:1"), ("cpus-per-task", "2")]
    assert directives.recorded_values(script) == {"job_name": "from-script", "partition": "viz",
                                                 "time": "00:10:00", "gpus": 1}


def test_merged_options_are_written_as_sbatch_reads_them():
    script = directives.script_options('#SBATCH --job-name="분석 \\"1\\"" --begin=now+1hour --array=0-3%2\n')
    job = JobSpec(script="", script_path="/j/s.sh").with_script_options(script)
    lines = batch.directive_lines(job.directives())
    assert lines == ['#SBATCH --job-name="분석 \\"1\\""', "#SBATCH --begin=now+1hour", "#SBATCH --array=0-3%2"]
    # Read back by the same rules, every written value is the checked one.
    again = directives.script_options("\n".join(lines) + "\n")
    assert {k: d.value for k, d in again.items()} == {k: d.value for k, d in script.items()}


def test_the_allow_list_in_the_jobs_guide_is_the_code_s():
    import pathlib
    guide = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "jobs.md").read_text()
    for option, (short, kind, _check) in directives.ALLOWED.items():
        assert f"`--{option}`" in guide, option
