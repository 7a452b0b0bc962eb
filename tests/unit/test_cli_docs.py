"""What the README says a ``hookfleet`` command takes is what its ``--help`` says."""

from __future__ import annotations

from click.testing import CliRunner

from tests.processes import ROOT
from workers.cli.main import main


def test_release_ids_are_a_repeated_option_in_the_readme_and_the_help() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = CliRunner().invoke(main, ["quarantine", "release", "--help"], terminal_width=200)

    assert shown.exit_code == 0
    assert "--id A --id B" in " ".join(shown.output.split())
    assert "--id ID ..." not in readme  # one --id does not take several ids
    assert readme.count("--id A --id B") >= 2  # the command list and *Quarantine*


def test_breaker_status_takes_an_optional_name_in_the_readme_and_the_help() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = CliRunner().invoke(main, ["breaker", "status", "--help"])

    assert "Usage: main breaker status [OPTIONS] [NAME]" in shown.output
    assert "hookfleet breaker status [<name>]" in readme
