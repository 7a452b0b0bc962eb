"""``hookfleet`` imports a subcommand only when it runs: ``--help`` is fast and lists
every command exactly as the commands themselves describe it."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from tests.processes import ROOT
from workers.cli.lazy import LazyCommandGroup
from workers.cli.main import SUBCOMMANDS, main

# What subcommands need and `--help` does not: each adds tenths of a second to a start.
HEAVY = ("celery", "kombu", "sqlalchemy", "redis", "httpx", "opentelemetry", "models.base")

_RUN_THEN_MODULES = """
import sys
from workers.cli.main import main
try:
    main(sys.argv[1:], prog_name="hookfleet")
except SystemExit:
    pass
print("--- modules ---")
print("\\n".join(sorted(sys.modules)))
"""


def run_then_list_modules(*args: str) -> subprocess.CompletedProcess[str]:
    """``hookfleet args...`` in a fresh interpreter, its output followed by every module
    that process imported."""
    return subprocess.run(
        [sys.executable, "-c", _RUN_THEN_MODULES, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.slow
def test_help_lists_every_command_without_importing_the_libraries_they_use() -> None:
    shown = run_then_list_modules("--help")

    shown_help, _, modules = shown.stdout.partition("--- modules ---\n")
    listed = shown_help.partition("Commands:\n")[2].splitlines()
    loaded = modules.splitlines()
    assert sorted(line.split()[0] for line in listed if line.strip()) == sorted(
        [*SUBCOMMANDS, "migrate", "up", "run"]
    )
    assert [m for m in loaded if m in HEAVY or m.partition(".")[0] in HEAVY] == []


@pytest.mark.slow
def test_send_list_shows_the_fixtures_without_importing_the_database_or_http_libraries() -> None:
    shown = run_then_list_modules("send", "standard", "--list")

    fixtures, _, modules = shown.stdout.partition("--- modules ---\n")
    assert fixtures.split()  # the shipped fixtures, one a line
    assert [m for m in modules.splitlines() if m.partition(".")[0] in HEAVY] == []


def test_each_summary_is_the_first_paragraph_of_its_commands_help() -> None:
    for name, lazy in SUBCOMMANDS.items():
        command = lazy.load()
        first_paragraph = " ".join((command.help or "").split("\n\n")[0].split())
        assert (name, lazy.summary) == (name, first_paragraph)


def test_help_listing_reads_the_same_before_and_after_the_commands_are_loaded() -> None:
    unloaded = LazyCommandGroup(
        name=main.name,
        help=main.help,
        lazy=SUBCOMMANDS,
        commands={n: c for n, c in main.commands.items() if n not in SUBCOMMANDS},
    )
    context = click.Context(main, info_name="hookfleet")
    for name in main.list_commands(context):
        main.get_command(context, name)  # every command imported: its own help

    def listing(group: click.Group) -> str:
        with click.Context(group, info_name="hookfleet", terminal_width=100) as ctx:
            return group.get_help(ctx)

    assert listing(unloaded) == listing(main)
    assert unloaded.commands.keys().isdisjoint(SUBCOMMANDS)  # listing imported none
