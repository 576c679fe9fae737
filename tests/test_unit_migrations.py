"""The migration list: each number once, in the order they are applied."""

import pytest

from hpcportal.db import MIGRATIONS

pytestmark = pytest.mark.unit


def test_migrations_are_numbered_once_and_listed_in_ascending_order():
    numbers = [number for number, _, _ in MIGRATIONS]
    assert numbers == sorted(set(numbers))
