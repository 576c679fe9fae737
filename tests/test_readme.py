"""The README stays true to the code."""

import os

from hpcportal.docs import BEGIN, END, settings_markdown

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")


def test_configuration_reference_matches_the_settings_registry():
    text = open(README, encoding="utf-8").read()
    assert BEGIN in text and END in text, "README lacks the generated settings table"
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == settings_markdown(), (
        "README's settings table is stale: regenerate it with `hpcportald settings --markdown`")


def test_readme_starts_with_the_two_commands():
    text = open(README, encoding="utf-8").read()
    head = text[:3000]
    assert "\nscripts/demo\n" in head
    assert "\nscripts/test\n" in head
    assert open(os.path.join(os.path.dirname(README), ".ci", "run")).read().strip().endswith("exec scripts/test")
