"""The README stays true to the code."""

import os
import re

from hpcportal.cli import build_parser
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


def _hpcportald_commands(text):
    """The argument lists of every ``hpcportald <command> ...`` in code (blocks and spans),
    up to a comment, a pipe, a closing parenthesis or an optional ``[...]``."""
    spans = [line.split(" #")[0] for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    spans += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for span in spans:
        for match in re.finditer(r"(?:^|[\s$(/])hpcportald((?: +[^\s|#)`\[]+)*)", span):
            if match.group(1).split():
                yield match.group(1).split()


def test_every_hpcportald_command_in_the_readme_parses():
    parser = build_parser()
    commands = [args for args in _hpcportald_commands(open(README, encoding="utf-8").read())
                if args[0] in parser._subparsers._group_actions[0].choices]
    assert len(commands) >= 10 and ["token", "--user", "alice"] in commands, commands
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit:
            raise AssertionError(f"README: `hpcportald {' '.join(args)}` is not a valid command") from None


def test_every_curl_example_is_one_the_demo_test_runs():
    """tests/test_demo.py runs the blocks marked ``<!-- example: demo -->`` against the demo."""
    text = open(README, encoding="utf-8").read()
    blocks = re.finditer(r"(<!-- example: demo(?: setup)? -->\n)?```[a-z]*\n(.*?)\n```", text, re.S)
    unmarked = [block.group(2) for block in blocks if "curl " in block.group(2) and not block.group(1)]
    assert not unmarked, f"curl examples the demo test does not run:\n{unmarked}"


def test_the_install_steps_put_hpcportald_on_path():
    text = open(README, encoding="utf-8").read()
    section = text[text.index("\n## Install\n"):text.index("\n## Configure\n")]
    steps = re.search(r"```\n(.*?)```", section, re.S).group(1)
    venv = re.search(r"python3 -m venv (\S+)", steps).group(1)
    assert re.search(rf"^ln -s {re.escape(venv)}/bin/hpcportald /usr/local/bin/", steps, re.M), steps
