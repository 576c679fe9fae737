"""The one parser of each Slurm value: a template's setting, a dashboard field and a
user's #SBATCH line read a size or a time the same way."""

import pytest

from hpcportal.catalog import templates as t
from hpcportal.slurm import directives, values

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit


@pytest.mark.parametrize("given", ["16GB", "16G", "1.5GiB", "512M", "2T", "100K", "0.1M"])
def test_a_size_with_a_unit_means_the_same_everywhere(given):
    assert t.slurm_memory(given) == values.slurm_memory(given)
    assert directives.script_options(f"#SBATCH --mem={given}\n")["mem"].value == values.slurm_memory(given)


def test_sizes_are_exact_and_memory_rounds_up_to_a_megabyte():
    assert values.size_bytes("0.1K") == 102  # 102.4 bytes, no float rounding on the way
    assert values.memory_megabytes("0.0000001M") == 1
    with pytest.raises(ValueError):
        values.size_bytes("1E")


@pytest.mark.parametrize("parse", [values.size_bytes, values.memory_megabytes, values.time_seconds,
                                   lambda v: values.count(v, 1)])
def test_hundreds_of_digits_are_refused_with_a_reason(parse):
    with pytest.raises(ValueError) as caught:
        parse("9" * 400)
    assert len(str(caught.value)) < 200  # the answer does not echo the whole value


@pytest.mark.parametrize("given, seconds", [(90, 5400), ("1-2:30", 95400), ("10:30", 630), ("1:100:00", 9600)])
def test_a_time_limit_means_the_same_everywhere(given, seconds):
    assert t.parse_slurm_time(given) == values.time_seconds(given) == seconds
    assert values.slurm_time(given) == values.format_time(seconds)


def test_only_a_users_job_may_be_unlimited():
    assert values.slurm_time("UNLIMITED") == "UNLIMITED"
    with pytest.raises(ValueError):
        t.parse_slurm_time("UNLIMITED")
    with pytest.raises(ValueError):
        values.time_seconds(10 ** 30)
