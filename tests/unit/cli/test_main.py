"""The command line as a whole: every command is registered from fleet/cli/, listed by
`fleet --help`, documented in the README, and its options follow one set of conventions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from fleet.cli.main import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[3]


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    found = {name: cli.get_command(ctx, name) for name in COMMANDS}
    return {name: command for name, command in found.items() if command is not None}


def _options() -> list[tuple[str, click.Option]]:
    return [
        (name, param)
        for name, command in _commands().items()
        for param in command.params
        if isinstance(param, click.Option)
    ]


def test_every_command_comes_from_a_module_of_fleet_cli() -> None:
    assert all(target.startswith("fleet.cli.") for target in COMMANDS.values())
    assert set(_commands()) == set(COMMANDS)
    assert all(command.name == name for name, command in _commands().items())


def test_help_lists_every_command_and_imports_none_of_their_dependencies() -> None:
    probe = (
        "import sys; from fleet.cli.main import main; sys.argv = ['fleet', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('redis', 'celery', 'numpy', 'scipy', 'fleet.planning.planner',"
        " 'fleet.loadtest.harness', 'fleet.messaging.app') if m in sys.modules]\n"
        "print('loaded:', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    listed = set(re.findall(r"^  ([a-z][a-z-]*)\s", out, re.M))
    assert set(COMMANDS) <= listed
    assert out.strip().endswith("loaded: []")


def test_the_readme_documents_every_command() -> None:
    cli_section = (ROOT / "README.md").read_text().split("## CLI", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^fleet ([a-z-]+)", cli_section, re.M))
    assert documented == set(COMMANDS)


@pytest.mark.parametrize("command, option", _options(), ids=lambda v: getattr(v, "name", v))
def test_every_option_says_what_it_does(command: str, option: click.Option) -> None:
    assert option.help, f"fleet {command} {option.opts[0]} has no help text"
    # defaults are shown one way: click's [default: ...], never written into the help text
    assert "default" not in option.help.lower(), f"fleet {command} {option.opts[0]}"


def test_out_is_always_a_folder_and_save_a_file() -> None:
    """--out: a folder a command writes its results into; --save: one file it writes."""
    for command, option in _options():
        if "--out" in option.opts:
            assert isinstance(option.type, click.Path), command
            assert not option.type.file_okay and option.type.dir_okay, command
        if "--save" in option.opts and command != "submit":  # submit: --save OUTPUT=PATH
            assert isinstance(option.type, click.Path), command
            assert option.type.file_okay and not option.type.dir_okay, command


def test_duration_means_seconds_of_arrivals_everywhere() -> None:
    helps = [o.help or "" for _, o in _options() if "--duration" in o.opts]
    assert len(helps) == 3
    assert all(h.startswith("Seconds of arrivals") for h in helps), helps
